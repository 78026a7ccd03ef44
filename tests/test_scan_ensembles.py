"""Every recipe row that ensembles SCAN averages the members the SCAN paper used for
that dataset, and says so in its note.

The definition below is written out from the SCAN paper's result tables (Lee et al.,
"Stacked Cross Attention for Image-Text Matching", ECCV 2018), independently of the
presets the recipes take: Table 1 (Flickr30K) prints the ensemble "SCAN t-i AVG + i-t
LSE", Table 2 (MS-COCO 1K) "SCAN t-i LSE + i-t AVG". The lambdas are those of the
released README's training commands for that dataset.
"""

from __future__ import annotations

import pytest

from xmrbench.recipe.load import recipe_index
from xmrbench.recipe.resolve import resolve

# dataset -> {(direction, pooling, lambda_softmax, lambda_lse or None for AVG)}
SCAN_PAPER_ENSEMBLES = {
    "flickr30k": {("t2i", "avg", 9.0, None), ("i2t", "lse", 4.0, 5.0)},
    "mscoco": {("t2i", "lse", 9.0, 6.0), ("i2t", "avg", 4.0, None)},
}
SOURCE = {"flickr30k": "Table 1", "mscoco": "Table 2"}


def _member(cfg) -> tuple:
    p = cfg.model.params
    return (p.direction, p.pooling, p.lambda_softmax, p.lambda_lse if p.pooling == "lse" else None)


def _scan_ensembles():
    for rid, path in sorted(recipe_index().items()):
        resolved = resolve(path, profile="full", require_data=False)
        by_id = {c.id: c for c in resolved.cells}
        dataset = next(iter(resolved.recipe.protocols.values())).dataset
        for cell in resolved.cells:
            members = [by_id[m] for m in cell.row.ensemble]
            if members and all(m.config.model.name == "scan" for m in members):
                yield rid, dataset, cell, members


ENSEMBLES = list(_scan_ensembles())


def test_the_recipes_have_scan_ensembles_on_both_datasets():
    assert {dataset for _, dataset, _, _ in ENSEMBLES} == set(SCAN_PAPER_ENSEMBLES)
    assert len(ENSEMBLES) >= 4  # AOQ Tables 1-2, ADAPT Tables 1-2


@pytest.mark.parametrize("rid,dataset,cell,members", ENSEMBLES, ids=[f"{e[0]}:{e[2].id}" for e in ENSEMBLES])
def test_scan_ensemble_members_are_the_scan_papers(rid, dataset, cell, members):
    assert {_member(m.config) for m in members} == SCAN_PAPER_ENSEMBLES[dataset], f"{rid} row {cell.id}"
    note = cell.row.note or ""
    assert "SCAN paper" in note and SOURCE[dataset] in note, f"{rid} row {cell.id}: the note must name the source"
    wanted = {"flickr30k": "t-i AVG + i-t LSE", "mscoco": "t-i LSE + i-t AVG"}[dataset]
    assert wanted in note, f"{rid} row {cell.id}: the note must name the members"


def test_member_schedules_follow_the_dataset():
    """MS-COCO members train on SCAN's MS-COCO schedule (20 epochs at 5e-4, decayed every 10);
    AOQ's second rounds on AOQ's own (Sec. 4.2: 10 epochs at 5e-4, then 5 at 5e-5)."""
    for rid, dataset, _cell, members in ENSEMBLES:
        for m in members:
            t = m.config.train
            want = (20, 0.0005, 10) if dataset == "mscoco" else (30, 0.0002, 15)
            if m.config.method is not None and m.config.method.name == "aoq" and m.config.method.params.offline:
                want = (15, 0.0005, 10)
            assert (t.epochs, t.lr, t.lr_decay_every) == want, f"{rid} {m.id}"
