"""The README and the docs: short README, and every link from the README and the configs lands somewhere.

The site itself is built by `mkdocs build --strict` in `make test` (broken links between docs pages,
missing anchors and API references that do not resolve fail that build).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#([^)\s]+))?\)")
DOC_REF = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def anchors(path: Path) -> set[str]:
    """The heading ids MkDocs' toc extension makes: lower case, punctuation dropped, spaces to dashes."""
    ids = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return ids


def test_readme_is_a_guide_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; results and details belong in docs/"
    assert sum(line.startswith("make ") for line in lines) == 2  # the two set-up commands


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = LINK.findall(text)
    assert links, "the README links into docs/"
    for target, anchor in links:
        path = ROOT / target
        assert path.is_file(), target
        assert not anchor or anchor in anchors(path), f"{target}#{anchor}"


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_config_headers_point_at_existing_pages(path):
    for page, anchor in DOC_REF.findall(path.read_text()):
        doc = ROOT / "docs" / page
        assert doc.is_file(), f"{path.name}: docs/{page}"
        assert not anchor or anchor in anchors(doc), f"{path.name}: docs/{page}#{anchor}"


def test_anchor_rule_matches_mkdocs_on_a_hand_worked_heading(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Hardware and precision\n## The demo on each machine\n### `train.compile`\n")
    assert anchors(page) == {"hardware-and-precision", "the-demo-on-each-machine", "traincompile"}
