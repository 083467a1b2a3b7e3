"""Delivery: the providers, the send ledger and sync, and the feedback they return."""
