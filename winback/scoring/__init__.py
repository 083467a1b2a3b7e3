"""Scoring: BG/NBD and Gamma-Gamma churn and value scores for every customer."""
