"""The shared torch core: encoders, models, losses, similarity kernels, metrics, engine."""
