"""Similarity kernels: pure tensor functions, each with a plain reference where it is not a GEMM."""
