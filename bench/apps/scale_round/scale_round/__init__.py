"""bench_limits.py's scale app: one small message to every online node (the simulated nodes
of harness/simnodes.py answer it), then every reply checked (the arrays plus the node's
index: each reply differs)."""
