"""Running resolved recipes: plan, execute, record."""
