"""Scaling laws and capacity planning: ladders of runs (plan.py), their results (collect.py),
fits of loss against model size and tokens (fit.py, report.py, plot.py), and the memory and
throughput planner (planner.py)."""
