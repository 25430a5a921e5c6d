"""Checkpoints: saving, verifying and loading them (store.py), and resuming one on another
parallel layout through a universal checkpoint (reshard.py)."""
