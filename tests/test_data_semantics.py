"""Tests of the synthetic world's machine-made semantics (xmrbench/data/synthetic/semantics.py):
regional semantics, image-level tags, the tag expansion dictionary and labels."""

from __future__ import annotations

import numpy as np
import pytest

from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.seeds import python_rng
from xmrbench.data.synthetic.semantics import (
    ALL_TAGS,
    CATEGORY_TAGS,
    CLASS_TAGS,
    DETECTOR_CLASS_WORDS,
    SCENE_TAGS,
    detections,
    regional_semantics,
    tag_expansion,
)
from xmrbench.data.synthetic.world import generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(size="tiny", seed=0)


def _caption_words(split) -> set[str]:
    return {w for c in split.captions for w in c.split()}


def test_contract_shapes_and_types(world):
    expansion = world["train"].extras["tag_expansion"]
    for _name, split in world.items():
        n = split.n_images
        sem, tags = split.extras["semantics"], split.extras["tags"]
        assert isinstance(sem, list) and len(sem) == n and all(isinstance(s, str) and s for s in sem)
        assert isinstance(tags, list) and len(tags) == n
        for entry in tags:
            scores = [s for _, s in entry]
            assert scores == sorted(scores, reverse=True)
            assert all(isinstance(t, str) and t == t.lower() and t in ALL_TAGS for t, _ in entry)
            assert all(0.0 <= s <= 1.0 for s in scores)
        assert split.extras["tag_expansion"] == expansion  # one dict for every split
        assert split.extras["scene_label"].shape == (n,) and split.extras["scene_label"].dtype == np.int64
        assert split.extras["object_labels"].shape == (n, len(lx.CLASSES))
    for word, listed in expansion.items():
        assert word == word.lower() and listed and all(t in ALL_TAGS for t in listed)


def test_test_is_the_first_fold_of_testall(world):
    n = world["test"].n_images
    for key in ("semantics", "tags"):
        assert world["test"].extras[key] == world["testall"].extras[key][:n]
    np.testing.assert_array_equal(world["test"].extras["object_labels"], world["testall"].extras["object_labels"][:n])


def test_labels_follow_the_scenes(world):
    split = world["dev"]
    for i, scene in enumerate(split.extras["scenes"]):
        assert split.extras["scene_label"][i] == lx.SCENE_INDEX[scene["scene"]]
        present = {lx.CLASS_INDEX[o["class"]] for o in scene["objects"]}
        assert set(np.flatnonzero(split.extras["object_labels"][i])) == present


def test_detector_vocabulary_is_only_partly_shared_with_captions(world):
    captions = _caption_words(world["train"])
    detector = {w for s in world["train"].extras["semantics"] for w in s.split()}
    shared, own = detector & captions, detector - captions
    assert len(shared) > 20
    assert {"person", "stone", "houseplant", "pan", "jet"} & own
    assert len(own) >= 5


def test_semantics_are_sorted_by_confidence_and_noisy(world):
    split = world["train"]
    scenes = split.extras["scenes"]
    d = python_rng(0, "semantics", "train")  # replay the stream
    missed = confused = extra = 0
    for scene, text in zip(scenes, split.extras["semantics"]):
        dets = detections(scene, d)
        confs = sorted((c for c, _ in dets), reverse=True)
        ranked = [p for _, p in sorted(dets, key=lambda cp: -round(cp[0], 6))]
        assert text == " ".join(ranked[:10])
        assert confs == sorted(confs, reverse=True)
        named = {p.split()[-1] for _, p in dets}
        present = {DETECTOR_CLASS_WORDS[o["class"]] for o in scene["objects"]}
        clutter = {DETECTOR_CLASS_WORDS[c["class"]] for c in scene["clutter"]}
        missed += bool(present - named)
        confused += bool(named - present - clutter)
        extra += bool(named & clutter)
    n = len(scenes)
    assert missed > 0.2 * n and confused > 0.1 * n and extra > 0.05 * n
    assert regional_semantics(scenes[:5], seed=0, split="train") == split.extras["semantics"][:5]


def test_tags_are_coarser_than_captions_and_describe_the_image(world):
    split = world["train"]
    captions = _caption_words(split)
    tag_words = {w for entry in split.extras["tags"] for t, _ in entry for w in t.split()}
    assert {"canine", "vehicle", "animal", "tableware"} <= tag_words
    assert len(tag_words - captions) > 10
    right = total = 0
    for scene, entry in zip(split.extras["scenes"], split.extras["tags"]):
        truth = {SCENE_TAGS[scene["scene"]]}
        for o in scene["objects"]:
            truth.add(CATEGORY_TAGS[lx.CLASSES[lx.CLASS_INDEX[o["class"]]].category])
            if o["class"] in CLASS_TAGS:
                truth.add(CLASS_TAGS[o["class"]])
        if entry:
            total += 1
            right += entry[0][0] in truth
    assert right / total > 0.9  # the top tag is nearly always true; lower ones may be false positives


def test_tag_expansion_maps_words_to_their_hypernyms_with_gaps():
    expansion = tag_expansion(0)
    nouns = {w: c for c in lx.CLASSES for w in (*c.nouns, *c.plurals)}
    for word, tags in expansion.items():
        if word in nouns:
            c = nouns[word]
            assert set(tags) <= {CLASS_TAGS.get(c.name), CATEGORY_TAGS[c.category]}
    covered = [w for w in nouns if w in expansion]
    assert 0.75 * len(nouns) < len(covered) < len(nouns)  # synonyms and plurals missing now and then
    partial = [w for w in covered if len(expansion[w]) < len({CLASS_TAGS.get(nouns[w].name),
                                                               CATEGORY_TAGS[nouns[w].category]} - {None})]
    assert partial  # some hypernym links are missing
    assert expansion == tag_expansion(0) and expansion != tag_expansion(1)


def test_sg_style_matching_retrieves_far_above_chance(world):
    """A3VSE's s_g baseline in a few lines: r = s_g^T q, q the k-hot expanded caption."""
    split = world["test"]
    index = {t: i for i, t in enumerate(ALL_TAGS)}
    s_g = np.zeros((split.n_images, len(ALL_TAGS)))
    for i, entry in enumerate(split.extras["tags"]):
        for t, score in entry:
            s_g[i, index[t]] = score
    expansion = split.extras["tag_expansion"]
    q = np.zeros((split.n_captions, len(ALL_TAGS)))
    for j, cap in enumerate(split.captions):
        for w in cap.split():
            for t in expansion.get(w, ()):
                q[j, index[t]] = 1.0
    scores = q @ s_g.T  # (captions, images)
    truth = split.caption_image()
    # ties count against the positive, as in our metrics
    rank = (scores >= scores[np.arange(len(truth)), truth][:, None]).sum(axis=1) - 1
    r10 = float((rank < 10).mean())
    assert r10 > 3 * 10 / split.n_images


def test_vocab_texts_give_machine_made_words_their_own_ids():
    """data.vocab_texts counts the words of the regional semantics and tags (training and
    un-annotated images) besides the captions': a tag no caption uses is <unk> without
    it and its own word with it; the run fingerprint says what the vocabulary holds."""
    from xmrbench.config import DataConfig
    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData

    base = {"name": "synthetic", "size": "tiny", "sparse_images": 0.2, "sparse_sentences": 5}
    plain_cfg = DataConfig(**base)
    with_cfg = DataConfig(**base, vocab_texts=("semantics", "tags"))
    plain = PreparedData(DATASETS["synthetic"](plain_cfg), plain_cfg, "regions", "tokens")
    both = PreparedData(DATASETS["synthetic"](with_cfg), with_cfg, "regions", "tokens")
    unannotated = both.raw_split("unannotated")
    tag_words = {w for tags in unannotated.extras["tags"] for tag, _ in tags for w in tag.split()}
    only_tags = sorted(tag_words - set(plain.vocab.idx2word))
    assert only_tags and set(only_tags) <= set(both.vocab.idx2word)
    assert set(plain.vocab.idx2word) <= set(both.vocab.idx2word)
    unk = plain.vocab.encode(only_tags[0])[1]
    assert plain.vocab.idx2word[unk] == "<unk>" and both.vocab.idx2word[both.vocab.encode(only_tags[0])[1]] == only_tags[0]
    assert both.vocabulary == "train captions, min_count=1 and the semantics and tags of the training images"
    assert "vocab_texts" not in plain_cfg.to_dict() and with_cfg.to_dict()["vocab_texts"] == ["semantics", "tags"]
