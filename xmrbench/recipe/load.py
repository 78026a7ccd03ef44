"""Loading recipe files: YAML with line numbers, ``extends:`` chains, validation.

A recipe's ``notes`` are appended to those of the bases it extends; every other key
merges as ``deep_merge`` does (see :func:`_merge`).

Every error names the file, the line where the YAML parser or the schema found the
problem, and the dotted key, e.g.
``recipes/two_branch/table2.yaml:41: rows[2].set: unknown key``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from xmrbench.config import deep_merge
from xmrbench.errors import RecipeError
from xmrbench.recipe.config import format_validation_error
from xmrbench.recipe.schema import Recipe

#: libyaml's safe loader where PyYAML was built with it (the same documents, about ten
#: times faster than the pure-Python one, which is the fallback)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: recipe file -> (its text, its id): ``recipe_index`` parses a file again only when its
#: text changed
_IDS: dict[Path, tuple[str, Any]] = {}


def recipes_root() -> Path:
    """The directory holding the recipes: ``$XMRBENCH_RECIPES``, else ``recipes/`` of the checkout."""
    env = os.environ.get("XMRBENCH_RECIPES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "recipes"
    if here.is_dir():
        return here
    return Path.cwd() / "recipes"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Doc:
    """A parsed YAML file: its data and the line of every node, for error messages."""

    def __init__(self, path: Path):
        self.path = path
        self.name = _display(path)
        if not path.is_file():
            raise RecipeError("file not found", where=self.name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read file ({exc.__class__.__name__})", where=self.name) from None
        try:
            self.node = yaml.compose(text, Loader=_LOADER)
            self.data = yaml.load(text, Loader=_LOADER)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.name}:{mark.line + 1}" if mark else self.name
            problem = getattr(exc, "problem", None) or str(exc)
            raise RecipeError(f"YAML syntax error: {problem}", where=where) from None
        if self.data is None:
            self.data = {}
        if not isinstance(self.data, dict):
            raise RecipeError("a recipe must be a YAML mapping", where=self.name)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """1-based line of the deepest node on ``loc`` that exists in this file."""
        node = self.node
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = None
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        match = (key_node, value_node)
                        break
                if match is None:
                    return line
                line = match[0].start_mark.line + 1
                node = match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> Iterator[_Doc]:
    """The file and its ``extends`` bases, most basic first."""
    path = path.resolve()
    if path in seen:
        raise RecipeError("extends: circular chain", where=_display(path))
    doc = _Doc(path)
    ext = doc.data.get("extends")
    bases: list[str]
    if ext is None:
        bases = []
    elif isinstance(ext, str):
        bases = [ext]
    elif isinstance(ext, list) and all(isinstance(e, str) for e in ext):
        bases = ext
    else:
        raise RecipeError("extends: expected a file path or a list of paths", where=f"{doc.name}:{doc.line_of(('extends',))}")
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise RecipeError(
                f"extends: base file {base!r} not found", where=f"{doc.name}:{doc.line_of(('extends',))}"
            )
        yield from _chain(base_path, (*seen, path))
    yield doc


def find_recipe(ref: str | Path) -> Path:
    """A recipe id (``two-branch-table2``) or a path to a YAML file -> the file's path."""
    candidate = Path(ref)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise RecipeError("file not found", where=str(ref))
        return candidate
    index = recipe_index()
    if str(ref) in index:
        return index[str(ref)]
    known = ", ".join(sorted(index)) or "(none)"
    raise RecipeError(f"unknown recipe {str(ref)!r}; known: {known}")


def recipe_index(root: Path | None = None) -> dict[str, Path]:
    """Recipe id -> file, for every recipe under the recipes directory (bases excluded)."""
    root = root or recipes_root()
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.y*ml")):
        if any(part.startswith("_") for part in path.relative_to(root).parts):
            continue
        text = path.read_text(encoding="utf-8")
        cached = _IDS.get(path)
        if cached is not None and cached[0] == text:
            rid = cached[1]
        else:
            try:
                data = yaml.load(text, Loader=_LOADER)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"{_display(path)}:{mark.line + 1}" if mark else _display(path)
                raise RecipeError(f"YAML syntax error: {getattr(exc, 'problem', exc)}", where=where) from None
            rid = data.get("id") if isinstance(data, dict) else None
            _IDS[path] = (text, rid)
        if not isinstance(rid, str):
            raise RecipeError("a recipe must be a mapping with a string 'id'", where=_display(path))
        if rid in index:
            raise RecipeError(f"recipe id {rid!r} is also used by {_display(index[rid])}", where=_display(path))
        index[rid] = path
    return index


def load_recipe(ref: str | Path) -> tuple[Recipe, Path]:
    """Load, merge (``extends``) and validate a recipe. Raises RecipeError."""
    path = find_recipe(ref)
    docs = list(_chain(path))
    merged = _merge(docs)
    top = docs[-1]
    try:
        recipe = Recipe(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        key, msg = format_validation_error(exc)
        key = _format_loc(loc) or key
        # report the line in the file that actually holds the offending key: the file that
        # holds most of its path (a preset or profile may come from a base), the latest on a tie
        where = top.name
        best = -1
        for doc in reversed(docs):
            depth = _depth(doc.data, loc)
            if depth > best and (depth or not loc):
                where, best = f"{doc.name}:{doc.line_of(loc)}", depth
        raise RecipeError(_clean(msg), where=where, key=key or None) from None
    except TypeError as exc:  # e.g. a non-mapping where a mapping is expected
        raise RecipeError(str(exc), where=top.name) from None
    return recipe, path


def _merge(docs: list[_Doc]) -> dict[str, Any]:
    """The files of an ``extends`` chain merged, most basic first: mappings (``config``,
    ``profiles``, ``presets``, ...) merge key by key, a later file winning; ``notes`` are
    appended, each file's once (a base reached twice adds its notes once); anything else
    is replaced by the later file's."""
    merged: dict[str, Any] = {}
    notes: list[Any] = []
    noted: set[Path] = set()
    malformed: Any = None
    for doc in docs:
        data = {k: v for k, v in doc.data.items() if k != "extends"}
        own = data.pop("notes", None)
        merged = deep_merge(merged, data)
        if isinstance(own, list):
            if doc.path not in noted:
                notes.extend(own)
                noted.add(doc.path)
        elif own is not None:
            malformed = own  # not a list: left for the schema to report
    if malformed is not None:
        merged["notes"] = malformed
    elif notes:
        merged["notes"] = notes
    return merged


def _depth(data: Any, loc: tuple[Any, ...]) -> int:
    """How many leading parts of ``loc`` exist in ``data`` (mapping keys, list indices)."""
    depth = 0
    for part in loc:
        if isinstance(data, Mapping) and isinstance(part, str) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            break
        depth += 1
    return depth


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")
