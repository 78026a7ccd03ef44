"""ACMR Table 4 (MS-COCO image-sentence retrieval): class labels on image-caption data
(``data.labels_from``), the protocol ``test_r10_fraction`` that records R@10 / 100 (the
scale of the table's "mAP" column), and the recipe's ACMR row end to end on the tiny
synthetic world, learning above chance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmrbench.config import DataConfig
from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.data.precomp import write_precomp
from xmrbench.data.registry import DATASETS
from xmrbench.engine.tasks import r10_fractions
from xmrbench.errors import DataError
from xmrbench.gate.chance import chance_i2t_recall, chance_rsum, chance_t2i_recall
from xmrbench.recipe.config import validate_cell_config
from xmrbench.recipe.resolve import resolve

from support import cli


def _tiny(**kw) -> object:
    return DATASETS["synthetic"](DataConfig(name="synthetic", size="tiny", **kw))


# ---------------------------------------------------------------------------------
# data.labels_from


def test_labels_from_reads_the_worlds_object_classes_as_the_labels():
    plain = _tiny()
    labelled = _tiny(labels_from="object_labels")
    assert labelled.info["labels_from"] == "object_labels"
    for name in ("train", "dev", "test"):
        before, after = plain.split(name), labelled.split(name)
        assert "labels" not in before.extras
        objects = np.asarray(before.extras["object_labels"])
        np.testing.assert_array_equal(np.asarray(after.extras["labels"]), objects)
        # multi-hot over the object classes, every image with at least one
        assert objects.ndim == 2 and set(np.unique(objects)) <= {0, 1} and objects.sum(1).min() >= 1
        # nothing else changes
        np.testing.assert_array_equal(np.asarray(after.global_feats), np.asarray(before.global_feats))
        assert after.captions == before.captions


def test_labels_from_an_extra_the_split_lacks_is_a_one_line_error():
    data = _tiny(labels_from="no_such_extra")
    with pytest.raises(DataError) as info:
        data.split("train")
    text = str(info.value)
    assert "\n" not in text and "'no_such_extra'" in text and "'train'" in text and "object_labels" in text


def test_labels_from_reads_a_per_image_array_beside_precomputed_features(tmp_path):
    world = _tiny()
    splits = {name: world.split(name) for name in ("train", "dev", "test")}
    write_precomp(tmp_path, splits)
    assert (tmp_path / "train_object_labels.npy").is_file()
    data = DATASETS["precomp"](DataConfig(name="precomp", root=str(tmp_path), labels_from="object_labels"))
    np.testing.assert_array_equal(np.asarray(data.split("test").extras["labels"]),
                                  np.asarray(splits["test"].extras["object_labels"]))
    missing = DATASETS["precomp"](DataConfig(name="precomp", root=str(tmp_path), labels_from="classes"))
    with pytest.raises(DataError) as info:
        missing.split("dev")
    assert str(tmp_path) in str(info.value) and "'classes'" in str(info.value)


def test_labels_from_is_a_key_of_the_caption_kinds_only_and_hashed_only_when_set():
    base = {"model": {"name": "acmr", "text_input": "tfidf"}, "method": {"name": "acmr"}, "loss": None}
    plain = validate_cell_config({**base, "data": {"name": "synthetic"}}, where="t")
    set_ = validate_cell_config({**base, "data": {"name": "synthetic", "labels_from": "object_labels"}}, where="t")
    assert "labels_from" not in plain.data.to_dict() and set_.data.to_dict()["labels_from"] == "object_labels"
    assert plain.hash() != set_.hash()
    assert "labels_from" not in DATASETS["labelled"].keys  # labelled sets carry their labels


# ---------------------------------------------------------------------------------
# protocol test_r10_fraction


def test_r10_fraction_protocol_is_the_test_split_with_the_fraction_keys():
    proto = PROTOCOLS["test_r10_fraction"]
    assert (proto.split, proto.folds, proto.task, proto.r10_fraction) == ("test", 1, "image_text", True)
    assert not PROTOCOLS["test"].r10_fraction
    out = r10_fractions({K.I2T_R10: 93.2, K.T2I_R10: 87.1})
    assert out == pytest.approx({K.I2T_R10_FRAC: 0.932, K.T2I_R10_FRAC: 0.871, K.AVG_R10_FRAC: 0.9015})
    for key in (K.I2T_R10_FRAC, K.T2I_R10_FRAC, K.AVG_R10_FRAC):
        assert K.METRICS[key].scale == "fraction" and K.METRICS[key].higher_is_better


def test_the_recipe_prints_the_papers_numbers_on_the_r10_fraction_columns():
    resolved = resolve("acmr-table4", profile="smoke")
    recipe = resolved.recipe
    assert recipe.columns == (K.I2T_R10_FRAC, K.T2I_R10_FRAC, K.AVG_R10_FRAC)
    assert set(recipe.protocols) == {"test_r10_fraction"}
    assert {c.id for c in resolved.runnable_cells()} == {"acmr", "cca-fv-hglmm"}
    acmr = resolved.cell("acmr").config
    assert (acmr.model.name, acmr.method.name, acmr.data.labels_from) == ("acmr", "acmr", "object_labels")
    assert acmr.train.select_by == "rsum" and acmr.model.params.text_input == "tfidf"
    quick = resolve("acmr-table4", profile="quick").cell("acmr").config
    assert quick.data.size == "small" and quick.data.labels_from == "object_labels"


# ---------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_acmr_learns_image_sentence_retrieval_from_object_labels(tmp_path, capsys):
    """The smoke profile's ACMR row, seed 0: the image-sentence metrics with the R@10
    fractions beside them, above chance by a stated factor (chance rsum of 100 images
    with 5 captions each: 31.6; measured seeds 0-2: 106-119)."""
    code, out, err = cli(["reproduce", "acmr-table4", "--profile", "smoke", "--seeds", "0", "--rows", "acmr",
                          "--results", str(tmp_path), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    (path,) = (tmp_path / "acmr-table4").glob("acmr--*.json")
    doc = json.loads(path.read_text())
    metrics = doc["metrics"]["test_r10_fraction"]
    assert metrics[K.I2T_R10_FRAC] == pytest.approx(metrics[K.I2T_R10] / 100)
    assert metrics[K.T2I_R10_FRAC] == pytest.approx(metrics[K.T2I_R10] / 100)
    assert metrics[K.AVG_R10_FRAC] == pytest.approx((metrics[K.I2T_R10] + metrics[K.T2I_R10]) / 200)
    assert metrics["rsum"] > 2.5 * chance_rsum(100, 5)
    assert metrics[K.I2T_R10_FRAC] > 2 * chance_i2t_recall(100, 5, 10) / 100
    assert metrics[K.T2I_R10_FRAC] > 1.5 * chance_t2i_recall(100, 10) / 100
    assert doc["curves"]["dev_score"] == doc["curves"]["dev_rsum"]  # selected on image-sentence recall
    code, out, err = cli(["report", "acmr-table4", "--profile", "smoke", "--results", str(tmp_path)], capsys)
    assert code == 0, err
    assert "i2t_r10_frac" in out and "0.932" in out


def test_acmr_on_captions_without_labels_says_what_to_set(tmp_path, capsys):
    code, out, err = cli(["reproduce", "acmr-table4", "--profile", "smoke", "--seeds", "0", "--rows", "acmr",
                          "--set", "data.labels_from=scene_label_missing", "--results", str(tmp_path), "--quiet",
                          "--threads", "1"], capsys)
    assert code != 0
    assert "Traceback" not in err and "scene_label_missing" in err
