"""Hydra entry points (train; eval, generate and prepare-data follow). `train.py` at the top calls one."""
