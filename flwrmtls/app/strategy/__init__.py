"""Strategies: how a ServerApp runs rounds over its nodes. One so far: :class:`FedAvg`, built on
:mod:`flwrmtls.app.strategy.aggregate` (weighted averages folded in as replies arrive)."""

from flwrmtls.app.strategy.fedavg import FedAvg, Result, StrategyError

__all__ = ["FedAvg", "Result", "StrategyError"]
