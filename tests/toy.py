"""A toy dataset with learnable structure, for engine and CLI tests."""

from __future__ import annotations

import numpy as np

from xmrbench.data.dataset import RetrievalData, Split

WORDS = ["red", "blue", "green", "dog", "cat", "car", "tree", "house", "boat", "bird"]


def toy_split(name: str, n_images: int, seed: int, dim: int = 16, cpi: int = 5) -> Split:
    """Images are noisy sums of two concept vectors; captions name the two concepts."""
    rng = np.random.default_rng(seed)
    concepts = np.random.default_rng(123).normal(size=(len(WORDS), dim))
    pairs = rng.integers(0, len(WORDS), size=(n_images, 2))
    feats = concepts[pairs[:, 0]] + concepts[pairs[:, 1]] + 0.3 * rng.normal(size=(n_images, dim))
    captions = []
    for a, b in pairs:
        for k in range(cpi):
            captions.append(f"a {WORDS[a]} and a {WORDS[b]}" if k % 2 else f"{WORDS[b]} with {WORDS[a]}")
    regions = np.repeat(feats[:, None, :], 4, axis=1) + 0.1 * rng.normal(size=(n_images, 4, dim))
    return Split(
        name=name, captions=captions, captions_per_image=cpi,
        global_feats=feats.astype(np.float32), regions=regions.astype(np.float32),
    )


def toy_data(n_train: int = 60, n_test: int = 20) -> RetrievalData:
    splits = {
        "train": toy_split("train", n_train, 1),
        "dev": toy_split("dev", n_test, 2),
        "test": toy_split("test", n_test, 3),
        "testall": toy_split("testall", n_test * 5, 3),
    }
    return RetrievalData(name="toy", fingerprint="toy0", loaders={k: (lambda v=v: v) for k, v in splits.items()})


def toy_model_and_split():
    """A small untrained embedding model (seeded, eval mode) and the toy training split."""
    import torch

    from xmrbench.core.models.registry import MODELS
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.recipe.config import validate_cell_config

    cfg = validate_cell_config({"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                                "loss": {"name": "bidirectional_ranking"}}, where="t")
    prepared = PreparedData(toy_data(), cfg.data, "global", "tfidf")
    torch.manual_seed(0)
    model = MODELS["two_branch_embedding"](cfg.model.params, prepared.dims).eval()
    return model, prepared.split("train")
