"""Retrieval metrics: pure tensor functions returning per-query values."""
