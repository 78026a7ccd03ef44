"""xmrbench: reproduce, compare and benchmark image-text cross-modal retrieval research."""

__version__ = "0.1.0"
