"""`xmrbench report --html`: one self-contained page holding every number of the
Markdown report, with the figures embedded, and the options it does not combine with."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from xmrbench.recipe.resolve import resolve
from xmrbench.report.collect import collect
from xmrbench.report.html import to_html
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

from support import cli

NOTE = "Tags such as <b>bold</b> & <script>x</script> stay text."

RECIPE = f"""
id: html-test
paper: two_branch
table: T
title: html test
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]
protocols:
  test: {{dataset: flickr30k, images: 1000}}
config:
  model: {{name: two_branch_embedding, hidden_dim: 32, embed_dim: 16}}
  loss: {{name: bidirectional_ranking, reduction: mean}}
  train: {{optimizer: adam, lr: 0.001, epochs: 2, batch_size: 200}}
profiles:
  smoke: {{seeds: [0, 1], config: {{data: {{size: tiny}}}}}}
rows:
  - {{id: a, label: A, paper: {{test: [33.5, 61.7, 73.6, 21.0, 47.4, 60.5]}}}}
  - {{id: b, label: B, set: {{model.linear: true}}}}
claims:
  - {{id: a-beats-b, text: "A beats B", metric: rsum, pairs: [[a, b]]}}
notes:
  - "{NOTE}"
"""

NUMBER = re.compile(r"\d+(?:\.\d+)?")


class Page(HTMLParser):
    """The text, the tags and the src/href attributes of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append(value)
                if tag == "img":
                    self.images.append(value)

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if not self.in_style:
            self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe file, store): two rows x two seeds on the tiny world, a few seconds."""
    root = tmp_path_factory.mktemp("html")
    path = root / "html.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    reproduce(resolve(path, profile="smoke"), ResultStore(root / "store"), device=torch.device("cpu"))
    return path, root / "store"


def test_page_is_self_contained_and_holds_the_markdown_numbers(store, tmp_path, capsys):
    recipe, results = store
    code, md, err = cli(["report", str(recipe), "--markdown", "--results", str(results)], capsys)
    assert code == 0, err
    out = tmp_path / "page.html"
    code, stdout, err = cli(["report", str(recipe), "--html", str(out), "--results", str(results)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout.replace("\n", "")
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    page = parse(html)
    text = " ".join(page.text)

    # self-contained: nothing fetched; the only links are in-page anchors and data URIs
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))]
    assert not [link for link in page.links if not link.startswith(("#", "data:"))]
    assert "script" not in page.tags and "link" not in page.tags and "@import" not in html
    assert len(page.images) == 3  # curves, ranks, paper vs ours
    assert all(src.startswith("data:image/png;base64,iVBORw0KGgo") for src in page.images)

    # every number of the Markdown report, and its synthetic-world labelling
    missing = set(NUMBER.findall(md)) - set(NUMBER.findall(text))
    assert not missing, sorted(missing)
    for fragment in ("ours measured on: synthetic-tiny", "NOT COMPARABLE", "ours (n=2)", "A beats B",
                     "paired t-test over seeds", "machine: ", "code: "):
        assert fragment in md and fragment in text, fragment
    assert "flickr30k" in text and "±" in text

    # text is escaped: the recipe's note arrives as text, not as markup
    assert NOTE in text and "b" not in page.tags


def test_contents_for_several_recipes(store):
    recipe, results = store
    rep = collect(str(recipe), ResultStore(results))
    figure = ("html-test-curves.png", b"\x89PNG\r\n\x1a\nnot really a png")
    page = parse(to_html([rep, rep], {"html-test": [figure]}, source="results store S"))
    anchors = [link for link in page.links if link.startswith("#")]
    assert anchors == ["#recipe-html-test", "#recipe-html-test-2"]
    assert "nav" in page.tags and page.tags.count("section") == 2 and len(page.images) == 2
    single = parse(to_html([rep]))
    assert "nav" not in single.tags and not single.images


@pytest.mark.parametrize("other", [["--markdown"], ["--latex"], ["--csv"], ["--json"], ["--out", "x.md"]])
def test_html_does_not_combine_with_other_outputs(other, tmp_path, capsys):
    code, out, err = cli(["report", "--html", str(tmp_path / "p.html"), *other, "--results", str(tmp_path)], capsys)
    assert code == 2, (out, err)
    assert "--html" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p.html").exists()
