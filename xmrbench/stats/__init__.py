"""Statistics for claims: paired tests over seeds and queries, multiple-testing correction."""
