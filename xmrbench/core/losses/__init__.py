"""Ranking and matching losses, one module per loss; see ``registry.py`` for the names."""
