"""Optuna tuning of the hybrid weight and G-ODIN settings on validation data (see the project README)."""
