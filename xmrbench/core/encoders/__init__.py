"""Encoders shared by the models: text (word embeddings + GRU) and image projections."""
