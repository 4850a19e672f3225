"""The benchmarks' FedAvg workload for NVIDIA FLARE 2.9: the same as bench/apps/flwrmtls_fedavg
(M MiB of float32 in 4 arrays, FedAvg over all N clients, no evaluation, client K adds
``1 + K/1024`` to every element), on FLARE's own FedAvg recipe (``nvflare.recipe.fedavg``
with ``FrameworkType.NUMPY``, what ``NumpyFedAvgRecipe`` wraps) and FLARE's Client API.

The one departure from ``NumpyFedAvgRecipe``: its persistor holds one array, so the model
comes from :class:`persistor.BenchPersistor` (4 random float32 arrays, made on the server
as the other systems' ServerApps make theirs). It runs in bench/.venv-nvflare, not in the
project's virtualenv (mypy sees ``nvflare`` as untyped).
"""
