"""The training engine: batching, optimisation, checkpointing, evaluation."""
