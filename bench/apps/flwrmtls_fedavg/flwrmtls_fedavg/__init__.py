"""The benchmarks' FedAvg workload for flwrmtls: M MiB of float32 in 4 arrays, FedAvg over all
N nodes for R rounds, no evaluation; node K adds ``1 + K/1024`` to every element (``1`` with
``distinct-updates=false``). bench/apps/flower_fedavg and bench/apps/nvflare_fedavg are the
same workload for Flower and NVIDIA FLARE."""
