"""Hydra entry points: train, eval and generate (`train.py` at the top calls train)."""
