"""The benchmarks' FedAvg workload for Flower 1.42: the same as bench/apps/flwrmtls_fedavg
(M MiB of float32 in 4 arrays, FedAvg over all N nodes, no evaluation, node K adds
``1 + K/1024``), written with Flower's own API. It runs in bench/.venv-flwr, not in the
project's virtualenv (mypy sees ``flwr`` as untyped)."""
