"""Runnable studies; configs live in experiments/configs/."""
