"""The documentation a user can open: the package, docs/ and README.md cite only files
that ship with the project, and every docs page a docstring names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xmrbench"
DOCS = ROOT / "docs"

#: References to files outside the project, which its users cannot open.
#: (The papers' errata, ERRATA.md, are restated in the project's docs/errata.md.)
FORBIDDEN = ("PEERS.md", "ERRATA.md", "../shared", "/work/shared")
#: ``docs/<page>.md`` with an optional ``#anchor``, as docstrings and comments write it.
DOC_REF = re.compile(r"\bdocs/((?:[\w.-]+/)*[\w.-]+\.md)(?:#([\w-]+))?")
#: A markdown link's target: ``[text](target)``.
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in (PACKAGE, DOCS, ROOT / "recipes"):
        files += [p for p in sorted(top.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return files


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    in_fence = False
    for line in _read(page).splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            anchors.add(_slug(match.group(1)))
    return anchors


def test_no_reference_to_files_outside_the_project():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {needle}"
        for path in _text_files()
        for number, line in enumerate(_read(path).splitlines(), 1)
        for needle in FORBIDDEN
        if needle in line
    ]
    assert not found, "cite docs/peers.md, docs/errata.md (or another page under docs/) instead:\n" + "\n".join(found)


def test_docs_pages_named_in_the_package_exist():
    missing = []
    refs = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(_read(path).splitlines(), 1):
            for match in DOC_REF.finditer(line):
                refs += 1
                page, anchor = DOCS / match.group(1), match.group(2)
                where = f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
                if not page.is_file():
                    missing.append(f"{where} (no such page)")
                elif anchor and anchor not in _anchors(page):
                    missing.append(f"{where} (no heading with this anchor)")
    assert refs, "no docs/<page>.md reference found: has the pattern stopped matching?"
    assert not missing, "\n".join(missing)


def test_links_between_docs_pages_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for match in MD_LINK.finditer(_read(page)):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{where} (no heading with this anchor)")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("VSE++", "vse"),
        ("Two-branch networks", "two-branch-networks"),
        ("Sparse corpora (A3VSE Sec. 4.1)", "sparse-corpora-a3vse-sec-41"),
        ("`xmrbench data check`", "xmrbench-data-check"),
    ],
)
def test_slug_follows_github(heading, slug):
    assert _slug(heading) == slug
