"""Datasets: the embedded synthetic world and readers for the on-disk layouts users have."""
