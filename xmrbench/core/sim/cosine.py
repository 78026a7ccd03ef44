"""Dot-product / cosine similarity kernels for embedding models."""

from __future__ import annotations

import torch


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Scale to unit L2 norm along ``dim``; a zero vector stays zero."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def cosine_sims(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
    """``img_emb (N_img, D)``, ``txt_emb (N_txt, D)`` -> cosine similarities ``(N_img, N_txt)``."""
    return l2norm(img_emb) @ l2norm(txt_emb).t()
