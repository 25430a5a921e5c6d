"""Parallel engines around the plain model: who is which rank (topology.py), the DeepSpeed
config (ds_config.py), the two engines (engine.py: what both share; zero.py, pipeline.py),
initial weights (weights.py) and the one place that builds the configured engine (build.py)."""
