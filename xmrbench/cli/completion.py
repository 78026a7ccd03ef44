"""Shell completion: recipe ids for RECIPE arguments, row ids of the named recipe for ``--rows``.

Enable it with ``eval "$(_XMRBENCH_COMPLETE=source_bash xmrbench)"`` in ``~/.bashrc``
(``source_zsh``, ``source_fish`` for the other shells). A recipe that does not load
completes nothing: completion never prints an error into the shell.
"""

from __future__ import annotations

from collections.abc import Iterable

import typer
from typer.completion import completion_init

from xmrbench.errors import XmrbenchError

# The app is built without typer's --install-completion options, which is also what
# registers the shells; register them here so that _XMRBENCH_COMPLETE works.
completion_init()

#: The parameters that name the recipe(s) ``--rows`` refers to, by verb.
RECIPE_PARAMS = ("recipe", "recipes", "target")


def complete_recipe(incomplete: str) -> list[str]:
    """Recipe ids starting with ``incomplete``."""
    from xmrbench.recipe.load import recipe_index

    try:
        ids = list(recipe_index())
    except XmrbenchError:
        return []
    return [rid for rid in ids if rid.startswith(incomplete)]


def recipe_rows(recipes: Iterable[str]) -> list[tuple[str, str]]:
    """``(row id, label)`` of every row xmrbench runs in ``recipes`` (ids or paths), in order."""
    from xmrbench.recipe.load import load_recipe

    out: dict[str, str] = {}
    for ref in recipes:
        try:
            recipe, _ = load_recipe(ref)
        except XmrbenchError:
            continue
        for row in recipe.rows:
            if row.run:
                out.setdefault(row.id, row.label)
    return list(out.items())


def complete_rows(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Row ids for ``--rows a,b,...``: the rows of the recipe(s) given before it that are
    not listed yet, completing the item after the last comma."""
    named: list[str] = []
    for name in RECIPE_PARAMS:
        value = ctx.params.get(name)
        if isinstance(value, str):
            named.append(value)
        elif value:
            named.extend(value)
    if not named:  # an option still waiting for its value stops click before it assigns the arguments
        named = [arg for arg in ctx.args if not arg.startswith("-")]
    listed, comma, last = incomplete.rpartition(",")
    prefix = listed + comma
    chosen = set(listed.split(",")) if listed else set()
    return [(prefix + rid, label) for rid, label in recipe_rows(named)
            if rid.startswith(last) and rid not in chosen]
