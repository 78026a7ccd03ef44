"""The results store: one atomically written JSON document per (recipe, cell, seed)."""
