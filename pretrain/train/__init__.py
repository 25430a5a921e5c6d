"""Training: the loop over an engine (loop.py), the optimizer and schedule (optim.py),
per-language validation (evaluate.py), metrics (metrics.py), the divergence guard (guard.py),
and the loop's callbacks (callbacks.py; faults.py for the crash-safety tests)."""
