"""The recipe file schema: one paper table (or figure) as data.

A recipe names the paper and table, the base it ``extends``, the evaluation
protocols the paper's numbers were measured on, the table's rows (each a set of
config overrides plus the paper's printed numbers), optional ``grid``/``zip``
axes, per-profile overrides, the paper's claims and free-text notes.

Override blocks that several rows share are written once, as named ``presets``
(in the recipe or in a base it extends); a row takes them with ``use:``. Each
preset's ``set`` and ``profiles`` are merged key by key into the row's, in the
order of ``use``, and the row's own keys win; the row then reads as if it had
written them itself.

Unknown keys and wrong types are rejected with the file and the dotted key.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from xmrbench.config import Strict
from xmrbench.core.metrics.keys import METRICS

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PROFILES = ("smoke", "quick", "full")
Profile = Literal["smoke", "quick", "full"]
PaperValue = float | None


def _check_keys(mapping: dict[str, Any], what: str) -> dict[str, Any]:
    """``mapping`` unchanged if every key is a valid id (``_check_id``)."""
    for name in mapping:
        _check_id(name, what)
    return mapping


def _check_id(value: str, what: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(f"{what} {value!r} must be lower-case letters, digits, '.', '_' or '-'")
    return value


class PaperProtocol(Strict):
    """What a paper's numbers were measured on; the comparable part of a fingerprint."""

    dataset: str  # flickr30k, mscoco, wikipedia, ...
    split: str = "test"
    images: int | None = Field(None, ge=1)
    captions_per_image: int = Field(5, ge=1)
    folds: int = Field(1, ge=1)
    features: str | None = None  # free text: the image features the paper used
    text_features: str | None = None
    vocabulary: str | None = None
    note: str | None = None


class ProfileSpec(Strict):
    """A named budget: ``smoke`` (seconds, tests), ``quick`` (minutes, laptop CPU), ``full`` (paper)."""

    description: str | None = None
    seeds: tuple[int, ...] = (0,)
    config: dict[str, Any] = {}
    requires_data_root: bool = False  # the profile needs real features (``--data-root``)


class ArtifactNeed(Strict):
    """A derived artifact a row's training reads: ``miner`` run over the selected model
    of ``cell`` (same seed), with the miner's own ``params``."""

    cell: str  # a row id of this recipe (for a grid row: its cell at the same grid point)
    miner: str  # miner registry name (engine/miners.py)
    params: dict[str, Any] = {}


class Needs(Strict):
    """What a row's runs need from other rows' runs (same seed): a later training stage."""

    init: str | None = None  # start from this row's selected weights instead of the initialisation
    artifacts: dict[str, ArtifactNeed] = {}  # name -> artifact, handed to the training method by name

    @field_validator("artifacts")
    @classmethod
    def _names(cls, value: dict[str, ArtifactNeed]) -> dict[str, ArtifactNeed]:
        return _check_keys(value, "artifact name")


class Preset(Strict):
    """A named block of row overrides (``presets:``), taken by rows with ``use:``."""

    set: dict[str, Any] = {}  # dotted config overrides, as a row's ``set``
    profiles: dict[Profile, dict[str, Any]] = {}  # as a row's ``profiles``


class Row(Strict):
    """One row of the paper's table."""

    id: str
    label: str
    # presets merged into ``set`` and ``profiles``, in this order (the row's own keys win);
    # after validation ``set`` and ``profiles`` hold the merged overrides
    use: tuple[str, ...] = ()
    set: dict[str, Any] = {}  # dotted config overrides
    profiles: dict[Profile, dict[str, Any]] = {}  # dotted overrides for one profile only (a row's own budget)
    run: bool = True  # False: printed by the paper, not run by xmrbench (see ``pending``)
    ensemble: tuple[str, ...] = ()  # row ids whose similarity matrices this row averages (same seed)
    # with two ensemble members [image-sentence model, region-phrase model]: instead of
    # averaging, the weighted distance D = (1 - w) d + w d_rp of the two-branch paper's
    # Eq. 8 (xmrbench/engine/region_phrase.py), w this weight
    region_phrase_weight: float | None = Field(None, gt=0, lt=1)
    needs: Needs | None = None  # a later stage: weights or artifacts from other rows' runs (same seed)
    pending: str | None = None  # why the row is not run (yet)
    source: str | None = None  # where the numbers come from, when not this recipe's table
    note: str | None = None  # what a reader of this row should know (an ensemble's members and their source)
    # protocol -> values aligned with the recipe's ``columns`` (None = printed as "-"),
    # or protocol -> {metric: value}
    paper: dict[str, list[PaperValue] | dict[str, PaperValue]] = {}
    # metric -> why the paper's printed value disagrees with its parts (e.g. an average that
    # is not the mean of its printed directions). The value stays as printed; the lint
    # reports the inconsistency as acknowledged instead of warning about it.
    inconsistent: dict[str, str] = {}

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, "row id")

    @field_validator("use", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pending_needs_no_run(self) -> Row:
        if self.pending and self.run:
            raise ValueError("a row with 'pending' must also say 'run: false'")
        if self.ensemble and self.use:
            raise ValueError("an ensemble row takes its settings from its members; it uses no preset")
        if self.ensemble and (self.set or self.profiles):
            raise ValueError("an ensemble row takes its settings from its members; it has no 'set' or 'profiles'")
        if len(self.ensemble) == 1:
            raise ValueError("an ensemble needs at least two members")
        if self.needs is not None and self.ensemble:
            raise ValueError("an ensemble has no training stage; 'needs' belongs to its members")
        if self.region_phrase_weight is not None and len(self.ensemble) != 2:
            raise ValueError("region_phrase_weight fuses two ensemble members, [image-sentence model, region-phrase "
                             "model]")
        return self


def _merge_into(merged: dict[str, Any], layer: dict[str, Any]) -> None:
    """Dotted overrides: a key of ``layer`` replaces the same key of ``merged`` and moves
    after every earlier key (so that ``model`` after ``model.name`` still wins when expanded)."""
    for key, value in layer.items():
        merged.pop(key, None)
        merged[key] = value


def _with_presets(row: Row, presets: dict[str, Preset]) -> Row:
    """``row`` with the presets it uses merged into its ``set`` and ``profiles`` (its own keys
    last, so they win). Every name in ``row.use`` must be a key of ``presets``."""
    if not row.use:
        return row
    merged_set: dict[str, Any] = {}
    merged_profiles: dict[str, dict[str, Any]] = {}
    for block in [*(presets[name] for name in row.use), row]:
        _merge_into(merged_set, block.set)
        for profile, overrides in block.profiles.items():
            _merge_into(merged_profiles.setdefault(profile, {}), overrides)
    return row.model_copy(update={"set": merged_set, "profiles": merged_profiles})


def _check_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"unknown metric {value!r}; known: {', '.join(sorted(METRICS))}")
    return value


class Claim(Strict):
    """A statement of the paper, judged by paired tests over seeds.

    ``kind: better`` (the default): each pair is (better cell, worse cell), a
    directional claim. ``kind: equivalent``: each pair [a, b] claims that a matches b
    within ``margin`` (in the metric's own units, e.g. 1.0 for one point of R@1),
    judged by two one-sided tests (``xmrbench.stats.claims``); the order of a pair
    carries no meaning. ``margin`` is required (> 0) for an equivalence claim and
    forbidden for a directional one. Dumps leave ``kind`` and ``margin`` out while
    at their defaults, so a directional claim serialises as it did before they existed.
    """

    id: str
    text: str
    metric: str = "rsum"
    protocol: str | None = None  # default: the recipe's first protocol
    pairs: tuple[tuple[str, str], ...]  # (better cell, worse cell), every pair must hold; unordered when equivalent
    where: str | None = None  # section of the paper that states it
    kind: Literal["better", "equivalent"] = "better"
    margin: float | None = None  # equivalence margin, in the metric's units

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, "claim id")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return _check_metric(value)

    @model_validator(mode="after")
    def _margin_for_equivalence(self) -> Claim:
        if self.kind == "equivalent":
            if self.margin is None:
                raise ValueError(f"claim {self.id!r}: an equivalence claim (kind: equivalent) needs a margin, "
                                 "the largest difference that still counts as a match, in the metric's units")
            if not (self.margin > 0 and math.isfinite(self.margin)):
                raise ValueError(f"claim {self.id!r}: margin must be a finite number > 0, not {self.margin!r}")
        elif self.margin is not None:
            raise ValueError(f"claim {self.id!r}: margin belongs to an equivalence claim (kind: equivalent); "
                             "a directional claim (kind: better) has none")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("kind") == "better":
            out.pop("kind")
        if out.get("margin", 0.0) is None:
            out.pop("margin")
        return out


class FigurePanel(Strict):
    """One panel of a ``tsne`` figure: a cell of the recipe and its caption."""

    cell: str  # a cell id of this recipe (a row id, or row@point for a grid row)
    title: str


class Figure(Strict):
    """A figure of the paper that ``xmrbench report --plots`` draws from the recipe's runs.

    ``lines``: for each of ``rows`` (default: every runnable row) one line of ``metric``
    on ``protocol`` (default: the first) against the grid key ``x``, mean over seeds with
    a band from the lowest to the highest seed; ``hlines`` are labelled horizontal
    reference lines (a number the paper prints, say). ``tsne``: one panel per cell, the
    t-SNE map (scikit-learn, seeded) of the test embeddings of the first ``images`` test
    images and all their captions, from the stored model of run ``seed``. ``curves``:
    one subplot per stored training curve named in ``series`` (``dev_i2t_r1``, say),
    one line per cell of ``rows`` against the epoch, mean over seeds with a min..max
    band. ``cross_rank``: per cell of ``rows``, the positive pairs of the protocol's
    split counted by cross-retrieval rank (``xmrbench/core/metrics/cross_rank.py``),
    scored by the stored model of run ``seed``. ``speed_accuracy``: per metric of ``series``
    (default: i2t and t2i R@1) one panel, each cell of ``rows`` a marker at (seconds its
    runs took to evaluate ``protocol``, mean metric), its area by parameter count.
    ``precision_scope`` (ACMR Figure 3): on a label protocol (``test_labels`` or
    ``test_labels_map50``), one panel per direction (Img2Txt, Txt2Img), one line per
    cell of ``rows`` of the stored precision at the top K against K = 50 ... 1000,
    mean over seeds."""

    id: str
    kind: Literal["lines", "tsne", "curves", "cross_rank", "speed_accuracy", "precision_scope"]
    title: str
    protocol: str | None = None
    metric: str = "rsum"
    x: str | None = None
    x_label: str | None = None
    rows: tuple[str, ...] = ()
    hlines: dict[str, float] = {}  # label -> value
    panels: tuple[FigurePanel, ...] = ()
    series: tuple[str, ...] = ()  # curves: keys of the runs' stored ``curves``, one subplot each
    images: int = Field(100, ge=2)
    seed: int = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, "figure id")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return _check_metric(value)

    @model_validator(mode="after")
    def _kind_fields(self) -> Figure:
        if self.kind == "lines" and not self.x:
            raise ValueError(f"figure {self.id!r}: a 'lines' figure needs x, a grid key")
        if self.kind == "tsne" and not self.panels:
            raise ValueError(f"figure {self.id!r}: a 'tsne' figure needs panels")
        if self.kind == "curves" and not self.series:
            raise ValueError(f"figure {self.id!r}: a 'curves' figure needs series, stored curve keys (dev_i2t_r1, ...)")
        if self.series and self.kind not in ("curves", "speed_accuracy"):
            raise ValueError(f"figure {self.id!r}: series belongs to a 'curves' or 'speed_accuracy' figure, "
                             f"not a {self.kind!r} one")
        return self


class Recipe(Strict):
    """A validated recipe (after ``extends`` has been merged)."""

    id: str
    paper: str
    table: str
    title: str
    kind: Literal["table", "figure", "sweep"] = "table"
    protocols: dict[str, PaperProtocol]
    columns: tuple[str, ...]  # metric keys, in the order the paper prints them
    config: dict[str, Any] = {}
    profiles: dict[Profile, ProfileSpec] = {}
    presets: dict[str, Preset] = {}  # name -> row overrides that rows take with ``use:``
    rows: tuple[Row, ...]  # validated after ``presets``: each row's presets are merged into it
    grid: dict[str, tuple[Any, ...]] = {}
    zip: dict[str, tuple[Any, ...]] = {}
    paper_values: dict[str, dict[str, list[PaperValue] | dict[str, PaperValue]]] = {}  # cell id -> protocol -> values
    # cell id -> profile -> dotted overrides: one grid point's own budget (a sparse setting
    # with 40 training pairs needs more epochs than one with 1,000); applied after the row's
    # profile overrides and before the grid point itself, which always wins
    cell_profiles: dict[str, dict[Profile, dict[str, Any]]] = {}
    claims: tuple[Claim, ...] = ()
    # row or cell id -> the paper's reason why that model is expected to stay near chance
    # there (it fails in the paper too). The regression gate then checks that it stays
    # below the learning bar instead of clearing it (docs/gate.md).
    near_chance: dict[str, str] = {}
    # row or cell id -> why the regression gate cannot judge it (measured: its smoke runs
    # learn, but spread too widely for a tolerance band above the learning bar). Listed by
    # every gate run; the row's other cells stay gated (docs/gate.md). The value may
    # instead map evaluation protocols to their reasons: only those protocols' learning
    # checks are left out, the cell's other protocols stay gated.
    not_gated: dict[str, str | dict[str, str]] = {}
    # the rows the regression gate's CI set judges (default: every runnable row); a table of
    # many expensive rows names a representative few, and ``xmrbench check --all`` judges all
    ci_rows: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()  # drawn by ``report --plots`` (README, "The paper's figures")
    # a derived sweep recipe (``xmrbench sweep``): row id -> the {dotted key: value} that row
    # sets, for the sweep's table and figure (one panel per key); empty for other recipes
    sweep_points: dict[str, dict[str, Any]] = {}
    notes: tuple[str, ...] = ()

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, "recipe id")

    @field_validator("presets")
    @classmethod
    def _preset_names(cls, value: dict[str, Preset]) -> dict[str, Preset]:
        return _check_keys(value, "preset name")

    @field_validator("rows")
    @classmethod
    def _apply_presets(cls, rows: tuple[Row, ...], info: ValidationInfo) -> tuple[Row, ...]:
        presets = info.data.get("presets")
        if presets is None:  # the presets themselves are invalid (reported on their own)
            return rows
        known = ", ".join(sorted(presets)) or "(none)"
        unknown = [
            InitErrorDetails(
                type=PydanticCustomError("unknown_preset", "row {row} uses an unknown preset; known: {known}",
                                         {"row": repr(row.id), "known": known}),
                loc=(i, "use"),
                input=name,
            )
            for i, row in enumerate(rows)
            for name in row.use
            if name not in presets
        ]
        if unknown:  # located at the row's ``use`` (rows[i].use), not at ``rows``
            raise ValidationError.from_exception_data(cls.__name__, unknown)
        return tuple(_with_presets(row, presets) for row in rows)

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if key not in METRICS:
                raise ValueError(f"unknown metric {key!r}; known: {', '.join(sorted(METRICS))}")
        return value

    @field_validator("paper")
    @classmethod
    def _paper(cls, value: str) -> str:
        from xmrbench.papers import PAPERS

        if value not in PAPERS:
            raise ValueError(f"unknown paper {value!r}; known: {', '.join(PAPERS.names())}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        from xmrbench.core.metrics.protocols import PROTOCOLS

        for name in self.protocols:
            if name not in PROTOCOLS:
                raise ValueError(f"protocols: unknown protocol {name!r}; known: {', '.join(PROTOCOLS.names())}")
        ids = [row.id for row in self.rows]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"rows: duplicate row id {sorted(dup)[0]!r}")
        by_id = {row.id: row for row in self.rows}
        for row in self.rows:
            for member in row.ensemble:
                target = by_id.get(member)
                if target is None or not target.run or target.ensemble:
                    raise ValueError(f"rows.{row.id}.ensemble: {member!r} is not a runnable, non-ensemble row")
            if row.ensemble and (self.grid or self.zip):
                raise ValueError(f"rows.{row.id}: ensembles cannot be combined with grid or zip axes")
            if row.needs is not None:
                sources = [("init", row.needs.init)] + [(f"artifacts.{k}.cell", a.cell) for k, a in row.needs.artifacts.items()]
                for key, source in sources:
                    if source is None:
                        continue
                    target = by_id.get(source)
                    if target is None or not target.run or target.ensemble or target.id == row.id:
                        raise ValueError(f"rows.{row.id}.needs.{key}: {source!r} is not another runnable, "
                                         "non-ensemble row")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError("zip: all lists must have the same length")
        for row in self.rows:
            self._check_values(f"rows.{row.id}.paper", row.paper)
        for cell_id, values in self.paper_values.items():
            self._check_values(f"paper_values.{cell_id}", values)
        for fig in self.figures:
            if fig.protocol is not None and fig.protocol not in self.protocols:
                raise ValueError(f"figures.{fig.id}: protocol {fig.protocol!r} is not declared under 'protocols'")
            if fig.kind == "lines" and fig.x not in self.grid:
                raise ValueError(f"figures.{fig.id}: x {fig.x!r} is not a grid key of this recipe")
            proto = fig.protocol or next(iter(self.protocols), None)
            if fig.kind == "cross_rank" and proto is not None and PROTOCOLS[proto].task != "image_text":
                raise ValueError(f"figures.{fig.id}: a 'cross_rank' figure needs an image-text protocol, "
                                 f"not {proto!r} (task {PROTOCOLS[proto].task!r})")
            if fig.kind == "precision_scope" and proto is not None and PROTOCOLS[proto].task != "label":
                raise ValueError(f"figures.{fig.id}: a 'precision_scope' figure needs a label protocol "
                                 f"(test_labels, test_labels_map50), not {proto!r} (task {PROTOCOLS[proto].task!r})")
            for row_id in fig.rows:
                if row_id not in by_id or not by_id[row_id].run:
                    raise ValueError(f"figures.{fig.id}.rows: {row_id!r} is not a runnable row")
        return self

    def _check_values(self, where: str, values: dict[str, Any]) -> None:
        for proto, vals in values.items():
            if proto not in self.protocols:
                raise ValueError(f"{where}: protocol {proto!r} is not declared under 'protocols'")
            if isinstance(vals, list) and len(vals) != len(self.columns):
                raise ValueError(
                    f"{where}.{proto}: {len(vals)} values for {len(self.columns)} columns ({', '.join(self.columns)})"
                )
            if isinstance(vals, dict):
                for key in vals:
                    if key not in METRICS:
                        raise ValueError(f"{where}.{proto}: unknown metric {key!r}")

    @property
    def default_protocol(self) -> str:
        return next(iter(self.protocols))
