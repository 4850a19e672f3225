"""Strategies: how a ServerApp runs rounds over its nodes. One so far: :class:`FedAvg`."""

from flwrmtls.app.strategy.fedavg import FedAvg, Result, StrategyError

__all__ = ["FedAvg", "Result", "StrategyError"]
