# The two commands of the README, and their parts.
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

# Reproduce a paper table on the embedded synthetic world and print paper vs ours.
demo: setup
	.venv/bin/xmrbench reproduce two-branch-table2 --profile quick

# Lint, then the test suite (the same command CI runs).
test: setup
	.venv/bin/ruff check xmrbench tests
	.venv/bin/python -m pytest
