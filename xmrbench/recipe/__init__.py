"""Recipes: the schema of a paper table as data, loading with ``extends``, resolution into cells."""
