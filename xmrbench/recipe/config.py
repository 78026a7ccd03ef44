"""Validation of a raw cell config against the registries.

The types live in ``xmrbench/config.py``; this module checks a merged mapping
(recipe ``config`` <- profile <- row <- grid point) against them and against the
registries of models, losses, samplers, datasets and protocols, and turns pydantic
errors into one-line ``ConfigError`` messages naming the dotted key. ``data`` may set
only the keys of the dataset kind it names (``xmrbench/data/registry.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from xmrbench.config import CellConfig, ComponentConfig, DataConfig
from xmrbench.errors import ConfigError, RegistryError

# ---------------------------------------------------------------------------
# validation


def format_validation_error(err: ValidationError, *, prefix: str = "") -> tuple[str, str]:
    """The first problem of a pydantic error as (dotted key, message)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    key = f"{prefix}{loc}" if loc else prefix.rstrip(".")
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = first["msg"]
        if "input" in first and kind not in ("missing",):
            msg += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return key, msg


def _component(raw: Any, section: str, registry: Mapping[str, Any], where: str) -> ComponentConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping with a 'name', got {type(raw).__name__}", where=where, key=section)
    if "name" not in raw:
        raise ConfigError("required key is missing", where=where, key=f"{section}.name")
    name = raw["name"]
    if not isinstance(name, str):
        raise ConfigError(f"expected a string, got {name!r}", where=where, key=f"{section}.name")
    try:
        cls = registry[name]
    except RegistryError as exc:
        raise ConfigError(exc.message, where=where, key=f"{section}.name") from None
    params = {k: v for k, v in raw.items() if k != "name"}
    try:
        validated = cls.Params(**params)
    except ValidationError as exc:
        key, msg = format_validation_error(exc, prefix=f"{section}.")
        raise ConfigError(f"{msg} (for {section} {name!r})", where=where, key=key) from None
    return ComponentConfig(name=name, params=validated)


def _data_config(raw: Any, where: str) -> DataConfig:
    """``data`` validated against the keys of the dataset kind it names (``data.name``)."""
    from xmrbench.data.registry import DATASETS

    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", where=where, key="data")
    name = raw.get("name", DataConfig.model_fields["name"].default)
    if not isinstance(name, str):
        raise ConfigError(f"expected a string, got {name!r}", where=where, key="data.name")
    if name not in DATASETS:
        raise ConfigError(f"unknown name {name!r}; known: {', '.join(sorted(DATASETS))}", where=where, key="data.name")
    keys = DATASETS[name].keys
    for key in raw:
        if key != "name" and key not in keys:
            msg = (f"not a key of dataset kind {name!r} (its keys: {', '.join(keys)})"
                   if key in DataConfig.model_fields else "unknown key")
            raise ConfigError(msg, where=where, key=f"data.{key}")
    try:
        return DataConfig(**raw)
    except ValidationError as exc:
        key, msg = format_validation_error(exc, prefix="data.")
        raise ConfigError(msg, where=where, key=key) from None


def validate_cell_config(raw: Mapping[str, Any], *, where: str) -> CellConfig:
    """Validate a merged raw config dict into a :class:`CellConfig` or raise ConfigError."""
    from xmrbench.core.losses.registry import LOSSES
    from xmrbench.core.metrics.protocols import PROTOCOLS
    from xmrbench.core.models.registry import MODELS
    from xmrbench.engine.methods import METHODS
    from xmrbench.engine.samplers import SAMPLERS

    if not isinstance(raw, Mapping):
        raise ConfigError("config must be a mapping", where=where)
    unknown = sorted(set(raw) - {"data", "model", "loss", "train", "eval", "method"})
    if unknown:
        raise ConfigError("unknown key", where=where, key=unknown[0])
    for section in ("model", "loss"):
        if section not in raw:
            raise ConfigError("required key is missing", where=where, key=section)
    model = _component(raw["model"], "model", MODELS, where)
    closed_form = MODELS[model.name].closed_form
    method = _component(raw["method"], "method", METHODS, where) if raw.get("method") is not None else None
    method_cls = METHODS[method.name] if method is not None else None
    if method is not None and method_cls.gradient_based == closed_form:
        how = "fitted in closed form" if closed_form else "trained by gradient descent"
        raise ConfigError(f"method {method.name!r} does not fit model {model.name!r}, which is {how}", where=where,
                          key="method.name")
    if method_cls is not None and method_cls.models is not None and model.name not in method_cls.models:
        raise ConfigError(f"method {method.name!r} trains model {', '.join(map(repr, method_cls.models))} only, "
                          f"not {model.name!r}", where=where, key="method.name")
    own_objective = method_cls is not None and not method_cls.uses_loss
    if raw["loss"] is None:
        if not closed_form and not own_objective:
            raise ConfigError(f"model {model.name!r} is trained by gradient descent and needs a loss", where=where, key="loss")
        loss = None
    else:
        if closed_form:
            raise ConfigError(f"model {model.name!r} is fitted in closed form; set 'loss: null'", where=where, key="loss")
        if own_objective:
            raise ConfigError(f"method {method.name!r} trains with its own objective (set by method.*); "
                              "set 'loss: null'", where=where, key="loss")
        loss = _component(raw["loss"], "loss", LOSSES, where)
    data = _data_config(raw.get("data", {}), where)
    rest = {k: raw[k] for k in ("train", "eval") if k in raw}
    try:
        cfg = CellConfig(data=data, model=model, loss=loss, method=method, **rest)
    except ValidationError as exc:
        key, msg = format_validation_error(exc)
        raise ConfigError(msg, where=where, key=key) from None
    if cfg.train.sampler not in SAMPLERS:
        known = ", ".join(sorted(SAMPLERS))
        raise ConfigError(f"unknown name {cfg.train.sampler!r}; known: {known}", where=where, key="train.sampler")
    for proto in cfg.eval.protocols:
        if proto not in PROTOCOLS:
            known = ", ".join(sorted(PROTOCOLS))
            raise ConfigError(f"unknown protocol {proto!r}; known: {known}", where=where, key="eval.protocols")
    return cfg
