"""Slurm: rendering and submitting the batch script (submit.py, templates/), and turning Slurm's
signals and time limit into a save and requeue inside the run (signals.py)."""
