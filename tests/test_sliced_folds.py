"""A split that one protocol scores whole and another in folds (MS-COCO 5K and 1K) is
scored once: the folds are cut from the whole matrix, and give the metrics that scoring
each fold on its own gives."""

from __future__ import annotations

import pytest
import torch

from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.tasks import evaluate_protocols
from xmrbench.core.models.registry import MODELS
from xmrbench.recipe.config import validate_cell_config

from toy import toy_data

CFG = validate_cell_config({"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                            "loss": {"name": "bidirectional_ranking"}}, where="t")
KW = dict(device=torch.device("cpu"), batch_size=16, block_images=7, sentence=False)


def _counting_model(prepared):
    torch.manual_seed(1)
    model = MODELS["two_branch_embedding"](CFG.model.params, prepared.dims).eval()
    calls: list[tuple[int, int]] = []
    plain = model.similarity

    def similarity(img, txt):
        calls.append((img.shape[0], txt.shape[0]))
        return plain(img, txt)

    model.similarity = similarity
    return model, calls


def _evaluate(protocols):
    prepared = PreparedData(toy_data(), CFG.data, "global", "tfidf")
    model, calls = _counting_model(prepared)
    kept: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    metrics, ranks = evaluate_protocols(model, prepared, protocols, seconds=seconds,
                                        on_sims=lambda name, sims: kept.__setitem__(name, sims), **KW)
    return metrics, ranks, kept, calls, seconds


def test_the_folds_are_cut_from_the_whole_matrix_and_give_the_same_metrics():
    together = _evaluate(("testall_5fold", "testall"))
    alone = [_evaluate((name,)) for name in ("testall_5fold", "testall")]
    metrics, ranks, kept, calls, seconds = together
    # scored once: the 100-image split in blocks of 7 images, every block against all 500 captions
    assert calls == alone[1][3] and sum(n for n, _ in calls) == 100 and {t for _, t in calls} == {500}
    assert sum(n for n, _ in alone[0][3]) == 100 and {t for _, t in alone[0][3]} == {100}  # alone: fold by fold
    assert set(seconds) == {"testall_5fold", "testall"}
    for (name, m_alone, r_alone, k_alone) in (("testall_5fold", *alone[0][:3]), ("testall", *alone[1][:3])):
        assert metrics[name].keys() == m_alone[name].keys()
        for key, value in m_alone[name].items():
            assert metrics[name][key] == pytest.approx(value, abs=1e-9), (name, key)
        assert ranks[name] == r_alone[name]
        assert [s.shape for s in kept[name]] == [s.shape for s in k_alone[name]]
        for a, b in zip(kept[name], k_alone[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # other blocks may reorder a float sum
    assert [tuple(s.shape) for s in kept["testall_5fold"]] == [(20, 100)] * 5
    # a kept fold is its own tensor, not a view that holds the whole matrix
    assert all(s.untyped_storage().nbytes() == s.numel() * s.element_size() for s in kept["testall_5fold"])


def test_protocols_in_the_other_order_score_the_split_once_too():
    metrics, _, _, calls, _ = _evaluate(("testall", "testall_5fold"))
    reference, *_ = _evaluate(("testall_5fold", "testall"))
    assert sum(n for n, _ in calls) == 100 and {t for _, t in calls} == {500}
    assert metrics == reference
