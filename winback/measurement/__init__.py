"""Measurement: each campaign window's uplift against its holdout, and its report."""
