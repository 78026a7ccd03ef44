"""Paper-vs-ours tables: join recipes with the results store and format them."""
