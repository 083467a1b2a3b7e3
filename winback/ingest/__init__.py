"""Ingest: the input contract and the loader that enforces it on the landing files."""
