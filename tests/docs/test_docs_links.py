"""Every relative link of README.md and docs/*.md reaches a file that exists and, when it names
a section (`page.md#section`), a heading of that page: moving text between pages cannot leave a
link dangling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if "://" not in t]


def test_anchor_is_githubs():
    assert anchor("flux-depth-pro: FLUX.1 Depth [dev] with safety checks") == (
        "flux-depth-pro-flux1-depth-dev-with-safety-checks"
    )
    assert anchor("`make gpu-check`") == "make-gpu-check"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_relative_link_resolves(page: Path):
    for target in links(page):
        path, _, section = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{target}: no such file"
        if section:
            assert section in anchors(linked), f"{target}: no such section"
