"""Every paper number in a recipe is copied exactly from the paper's text.

For each row, the printed numbers (in column order, '-' cells skipped) must appear as
a contiguous run of numbers on one line of one of the paper texts (``$XMRBENCH_PAPERS``
or the default directory, see ``papers.py``). Where the texts are missing the test is
skipped, or fails when ``XMRBENCH_REQUIRE_PAPERS=1``.
"""

from __future__ import annotations

import re
from pathlib import Path

from xmrbench.recipe.lint import normalized_values
from xmrbench.recipe.load import load_recipe, recipe_index

from papers import require_papers

NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?![\w.])")
DIFFERENCE = re.compile(r"\(\s*[+-]\d+(?:\.\d+)?\s*\)")  # AOQ Table 3: "98.2 (-0.3)"


def _paper_lines(papers: Path) -> list[list[float]]:
    lines = []
    for path in sorted(papers.glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            clean = DIFFERENCE.sub(" ", re.sub(r"<[^>]+>", " ", line).replace("\\", " "))
            tokens = [float(t.replace(",", "")) for t in NUMBER.findall(clean)]
            if tokens:
                lines.append(tokens)
    return lines


def _printed(value: float) -> float:
    # compared as numbers: "0.220" and "39.60" are the floats 0.22 and 39.6
    return float(value)


def _contains_run(tokens: list[str], run: list[str]) -> bool:
    n = len(run)
    return any(tokens[i : i + n] == run for i in range(len(tokens) - n + 1))


def test_every_paper_number_is_in_the_paper_text():
    lines = _paper_lines(require_papers())
    missing = []
    checked = 0
    for rid, path in recipe_index().items():
        recipe, _ = load_recipe(path)
        sources = [(row.id, row.paper) for row in recipe.rows] + list(recipe.paper_values.items())
        for cell_id, values in sources:
            for proto, metrics in normalized_values(recipe, values).items():
                run = [_printed(metrics[c]) for c in recipe.columns if metrics.get(c) is not None]
                if not run:
                    continue
                checked += 1
                if not any(_contains_run(tokens, run) for tokens in lines):
                    missing.append(f"{rid} {cell_id} {proto}: {' '.join(map(repr, run))}")
    assert checked > 0
    assert not missing, "numbers not found in the paper texts:\n" + "\n".join(missing)
