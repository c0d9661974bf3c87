"""Gradient leakage attacks (see issue 4)."""
