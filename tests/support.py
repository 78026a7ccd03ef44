"""Shared test support: the command line in-process, tiny recipes, chance levels, and the
train-then-reload check every trainable model goes through."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch

from xmrbench.core.models.base import RetrievalModel
from xmrbench.gate.chance import chance_rsum  # the chance level every learning test compares with

REPO = Path(__file__).resolve().parents[1]
BASES = REPO / "recipes" / "_base"


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``xmrbench ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    from xmrbench.cli.app import main

    old = sys.argv
    sys.argv = ["xmrbench", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def tiny_recipe(
    rid: str,
    rows: str,
    *,
    title: str = "test recipe",
    loss: str = "{name: bidirectional_ranking, reduction: mean}",
    model: str = "{name: two_branch_embedding, hidden_dim: 32, embed_dim: 16}",
    epochs: int = 1,
    batch_size: int = 200,
    train_extra: str = "",
    seeds: str = "[0]",
    extra: str = "",
) -> str:
    """A two-branch recipe on the tiny synthetic world (seconds per run); ``rows`` is the
    YAML list of rows, one ``  - {...}`` per line."""
    train = f"{{optimizer: adam, lr: 0.001, epochs: {epochs}, batch_size: {batch_size}{train_extra}}}"
    return (
        f"id: {rid}\npaper: two_branch\ntable: T\ntitle: {title}\n"
        "columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]\n"
        "protocols:\n  test: {dataset: synthetic, images: 100}\n"
        f"config:\n  model: {model}\n  loss: {loss}\n  train: {train}\n"
        f"profiles:\n  smoke: {{seeds: {seeds}, config: {{data: {{size: tiny}}}}}}\n"
        f"rows:\n{rows.strip(chr(10))}\n{extra}"
    )


def base_recipe(tmp_path: Path, base: str, paper: str, row: str) -> Path:
    """A one-row recipe that only extends ``recipes/_base/<base>.yaml``."""
    path = tmp_path / f"{base}-base.yaml"
    path.write_text(
        f"id: {base}-base-check\nextends: {BASES / (base + '.yaml')}\npaper: {paper}\ntable: t\ntitle: t\n"
        f"protocols: {{test: {{dataset: synthetic}}}}\ncolumns: [rsum]\nrows: [{{id: {row}, label: {row}}}]\n"
    )
    return path


def random_tokens(gen: torch.Generator, n: int, *, min_len: int = 1, max_len: int = 7, vocab: int = 40):
    """``n`` random captions of ``min_len..max_len`` tokens (ids from 4, padding 0)."""
    from xmrbench.core.models.base import TextBatch

    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen)
    toks = torch.randint(4, vocab, (n, int(lengths.max())), generator=gen)
    toks[torch.arange(toks.shape[1])[None, :] >= lengths[:, None]] = 0
    return TextBatch(tokens=toks, lengths=lengths)


def assert_learns(metrics: dict[str, float], n_images: int, *, factor: float, cpi: int = 5) -> None:
    """``metrics["rsum"] > factor x chance_rsum(n_images)`` (``n_images`` per fold), with a message that says so."""
    bar = factor * chance_rsum(n_images, cpi)
    assert metrics["rsum"] > bar, f"rsum {metrics['rsum']:.1f} is not above {factor:g} x chance ({bar:.1f})"


def train_and_check_reload(cfg, prepared, tmp_path: Path, *, min_ratio: float = 2.5, rtol: float = 0.0, atol: float = 1e-6):
    """Train ``cfg`` on ``prepared``, check it beats a random ranking by ``min_ratio`` x,
    and that the returned and the checkpointed weights give identical similarity matrices
    (and the stored metrics), whatever the evaluation block size. Returns the outputs."""
    from xmrbench.core.models.registry import MODELS
    from xmrbench.engine.evaluate import (
        encode,
        metrics_from_similarities,
        similarity_matrix,
    )
    from xmrbench.engine.train import train_and_evaluate

    cpu = torch.device("cpu")
    out = train_and_evaluate(cfg, 0, prepared, device=cpu, work_dir=tmp_path)
    test = prepared.split("test")
    assert_learns(out.metrics["test"], test.n_images, factor=min_ratio)

    def rebuilt(state):
        model = MODELS[cfg.model.name](cfg.model.params, prepared.dims)
        model.load_state_dict(state)
        return model.eval()

    stored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["best_state"]
    sims = []
    size, blocks = cfg.eval.batch_size, cfg.eval.block_images  # the engine's own evaluation settings
    for state, block in ((out.state_dict, blocks), (stored, blocks), (stored, 7)):
        model = rebuilt(state)
        sims.append(similarity_matrix(model, encode(model, test, device=cpu, batch_size=size), block_images=block))
    assert torch.equal(sims[0], sims[1])
    assert torch.allclose(sims[1], sims[2], rtol=rtol, atol=atol)  # blocks change only the rounding
    metrics, _ = metrics_from_similarities([sims[0]], captions_per_image=5)
    assert metrics == out.metrics["test"]
    return out


class VectorPairs:
    """The part of a prepared training split that the closed-form and autoencoder models read
    in their tests: image vectors, text vectors, caption -> image, and the raw split's
    ``extras`` (``labels`` when given). ``dtype`` None keeps the arrays' own (float64 for
    the tests that compare with naive computations)."""

    def __init__(self, images, texts, caption_image, labels=None, dtype: torch.dtype | None = torch.float32):
        self.images = torch.as_tensor(images, dtype=dtype)
        self.texts = torch.as_tensor(texts, dtype=dtype)
        self._caption_image = np.asarray(caption_image, dtype=np.int64)
        self.name = "train"
        self.split = types.SimpleNamespace(extras={} if labels is None else {"labels": labels})

    @property
    def n_images(self) -> int:
        return len(self.images)

    def caption_image(self) -> np.ndarray:
        return self._caption_image

    def image_batch(self, index) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(index))]

    def text_batch(self, index):
        from xmrbench.core.models.base import TextBatch

        return TextBatch(vectors=self.texts[torch.as_tensor(np.asarray(index))])



class IdentityModel(RetrievalModel):
    """A retrieval model whose embeddings are its inputs (image features, text vectors):
    scores are dot products of the raw vectors (hand-checked evaluation cases)."""

    def __init__(self):
        torch.nn.Module.__init__(self)  # no parameters, no dimensions

    def encode_images(self, images):
        return images

    def encode_texts(self, text):
        return text.vectors


def store_converged_run(store, resolved, cell, seed: int, metrics: dict[str, float], *,
                        protocols: dict | None = None, env: dict | None = None) -> None:
    """Write a hand-made, converged result of ``cell`` at ``seed`` into ``store`` (metrics
    of the protocol ``test``): claims and reports read it as a trained run."""
    from xmrbench.core.convergence import PLATEAU, Convergence
    from xmrbench.store.schema import SCHEMA_VERSION, CellRef, DatasetRef, RecipeRef, ResultDoc

    done = Convergence(True, PLATEAU, "plateaued", epochs=10, gain=0.0, window=3, threshold=0.01).to_dict()
    store.write(ResultDoc(
        schema_version=SCHEMA_VERSION,
        recipe=RecipeRef(id=resolved.id, path=str(resolved.path), hash=resolved.hash, paper="two_branch",
                         table="T", profile="smoke"),
        cell=CellRef(id=cell.id, label=cell.label, row=cell.row.id, hash=cell.hash),
        seed=seed, config={}, dataset=DatasetRef(name="synthetic", fingerprint="f" * 16),
        protocols=protocols or {"test": {"dataset": "synthetic"}}, metrics={"test": metrics},
        env=env or {}, created=f"2026-01-01T00:00:0{seed}+00:00", convergence=done,
    ))
