"""Base classes for typed, strict configuration blocks.

Every pluggable component (model, loss) declares its hyper-parameters as a
``Params`` subclass: defaults live there and nowhere else, unknown keys and wrong
types are rejected (``"0.1"`` is not a number, ``1.5`` is not an integer). YAML has
no tuples, so a list is accepted wherever the schema says tuple.
"""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


def _coerce(annotation: Any, value: Any) -> Any:
    """Turn YAML lists into tuples where ``annotation`` asks for a tuple (recursively)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if isinstance(value, list) and typing.get_origin(arg) in (tuple, list):
                return _coerce(arg, value)
            if isinstance(value, dict) and typing.get_origin(arg) is dict:
                return _coerce(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, list) and args:
        return [_coerce(args[0], v) for v in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _coerce(args[1], v) for k, v in value.items()}
    return value


class StrictModel(BaseModel):
    """Strict, frozen, extra-forbidding model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        hints = typing.get_type_hints(cls)
        out = dict(data)
        for name in cls.model_fields:
            if name in out:
                out[name] = _coerce(hints.get(name, Any), out[name])
        return out


class Params(StrictModel):
    """Hyper-parameters of a registered component (model, loss, ...).

    A parameter added after results were recorded is listed in ``hashed_when_set``:
    the hashed form (``hashed()``) leaves it out while it holds its default, so the
    hash of every config that does not set it (and every stored result and regression
    reference keyed by that hash) stays what it was.
    """

    hashed_when_set: ClassVar[tuple[str, ...]] = ()

    def hashed(self) -> dict[str, Any]:
        """The parameters as they enter a config's dump and hash."""
        out = self.model_dump(mode="json")
        for key in self.hashed_when_set:
            if getattr(self, key) == type(self).model_fields[key].default:
                del out[key]
        return out
