"""Training methods: how a cell's parameters are optimised, one declared contract.

The engine (``engine/train.py``) owns the loop: epochs, batches drawn by the sampler,
the dev evaluation that selects the model, checkpoints and resuming. What happens in
one step belongs to the cell's *training method*, a :class:`TrainingMethod` chosen by
``method.name`` (default: the model's own, :data:`DEFAULT_METHOD`). A method declares

- ``gradient_based``: trained step by step (``step``), or fitted once (``fit``);
- ``models``: the models it can train (None: any), checked when a cell is validated;
- ``uses_loss``: whether it trains with the cell's ``loss``; a method whose own
  ``Params`` define its whole objective (A3VSE's) says False, and its cells set
  ``loss: null``;
- ``streams()``: data streams besides the main one (annotated and pseudo pairs, say),
  each drawn by its own sampler, with the split's per-item arrays it names
  (``Stream.extras``); their batches arrive in ``TrainBatch.streams``;
- ``batch_extras``: per-item split arrays it wants in ``TrainBatch.extras``;
- ``plan_epoch(train, rng)``: the epoch's batches when it draws its own (phrase
  localization: region-phrase pairs, ``engine/phrase_method.py``), each handed to
  ``step`` as it is; None (the default): caption batches from the cell's sampler;
- ``setup()``: its optimisers and schedules, built once the model sits on its device;
- ``step(ctx, batch) -> float``: one training step, its own zero_grad / backward /
  optimiser steps (several optimisers on a schedule of steps if it likes), using
  ``ctx.progress`` for coefficients that change with training progress and
  ``ctx.artifacts`` for what earlier stages produced (``xmrbench/engine/stages.py``);
- ``end_epoch()``, ``lr()``, ``state_dict()`` / ``load_state_dict()``: learning-rate
  schedules, the logged rate, and everything a checkpoint needs to resume bit for bit.

The engine never asks a model or a method whether it has a hook: every hook has a
default in :class:`TrainingMethod` or ``RetrievalModel``.

The contract itself (:class:`TrainingMethod`, :class:`Stream`, :class:`StepContext`,
:class:`Progress`, the optimiser helpers and :class:`GradientMethod`) is in
``engine/training_method.py`` and re-exported here; this module holds the registry,
``METHODS``, whose entries may live in modules beside it (``engine/a3vse_method.py``,
``engine/aoq_method.py``, ``engine/adapt_method.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xmrbench.core.models.registry import MODELS
from xmrbench.engine.a3vse_method import A3VSEMethod
from xmrbench.engine.acmr_method import ACMRMethod
from xmrbench.engine.adapt_method import ADAPTMethod
from xmrbench.engine.aoq_method import AOQMethod
from xmrbench.engine.corr_ae_method import CorrAEMethod
from xmrbench.engine.phrase_method import PhraseCCAMethod, PhraseLocalizationMethod
from xmrbench.engine.training_method import (
    GradientMethod,
    MethodParams,
    Progress,
    StepContext,
    Stream,
    TrainingMethod,
    build_optimizer,
    build_scheduler,
)
from xmrbench.registry import Registry

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "A3VSEMethod",
    "ACMRMethod",
    "ADAPTMethod",
    "AOQMethod",
    "ClosedFormMethod",
    "GradientMethod",
    "MethodParams",
    "Progress",
    "StepContext",
    "Stream",
    "TrainingMethod",
    "build_optimizer",
    "build_scheduler",
    "method_of",
]

#: Name of the method a model trains with when its cell names none.
DEFAULT_METHOD = {False: "gradient", True: "closed_form"}  # keyed by RetrievalModel.closed_form


class ClosedFormMethod(TrainingMethod):
    """A closed-form model (CCA, the tag-matching s_g baseline) fitted once on the training split."""

    gradient_based = False

    def fit(self, split: Any) -> None:
        self.model.fit(split)


METHODS: Registry[type[TrainingMethod]] = Registry(
    "training method",
    {
        "gradient": GradientMethod,
        "closed_form": ClosedFormMethod,
        "a3vse": A3VSEMethod,
        "adapt": ADAPTMethod,
        "aoq": AOQMethod,
        "acmr": ACMRMethod,
        "corr_ae": CorrAEMethod,
        "phrase_localization": PhraseLocalizationMethod,
        "phrase_cca": PhraseCCAMethod,
    },
)


def method_of(config: Mapping[str, Any]) -> type[TrainingMethod] | None:
    """The training method a stored run config trains with (its ``method.name``, else its
    model's default); None for a config without a known model (an ensemble's)."""
    named = (config.get("method") or {}).get("name")
    if named is not None:
        return METHODS.get(str(named))
    model = MODELS.get(str((config.get("model") or {}).get("name")))
    return None if model is None else METHODS[DEFAULT_METHOD[model.closed_form]]
