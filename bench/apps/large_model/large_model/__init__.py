"""bench_limits.py's large-model app: the ServerApp sends every node a model of ``model-bytes``
float32 in ``arrays`` arrays; node K replies with the model plus K (new bytes from each node);
the ServerApp checks every reply and prints its stamps."""
