"""The README and the docs: short README, every link from the README and the configs lands somewhere, and
the built site reads offline with every API cross-reference a link.

`make test` builds the site with `mkdocs build --strict` (broken links between docs pages, missing anchors
and names in docstrings that resolve to nothing fail that build); the tests below build it once more into
a temporary folder (about 5 s) to read the HTML.
"""

import importlib.util
import os
import re
import subprocess
import sys
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


ROLE_LEFT = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):")
# what a browser fetches by itself: scripts, style sheets, fonts, icons (a plain <a href> link is not)
FETCHED = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?(https?:)?//", re.IGNORECASE)
CSS_FETCHED = re.compile(r"(?:@import\s*(?:url\()?|url\()\s*[\"']?(?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_fetch_rules_catch_a_cdn_script_and_pass_a_link():
    assert FETCHED.search('<script src="https://cdnjs.cloudflare.com/x.js"></script>')
    assert FETCHED.search("<link rel=stylesheet href=//fonts.googleapis.com/css>")
    assert not FETCHED.search('<a href="https://docs.pytorch.org/">x</a>')
    assert not FETCHED.search('<script src="../assets/javascripts/bundle.js"></script>')
    assert CSS_FETCHED.search("@import url('https://fonts.googleapis.com/css?family=Roboto');")
    assert not CSS_FETCHED.search("src: url(../fonts/x.woff2)")


def test_site_reads_offline(site):
    fetched = [
        f"{path.relative_to(site)}: {match.group(0)}"
        for path in sorted(site.rglob("*"))
        if path.suffix in {".html", ".css"}
        for match in (FETCHED if path.suffix == ".html" else CSS_FETCHED).finditer(path.read_text())
    ]
    assert not fetched, "the site fetches from the network:\n" + "\n".join(fetched[:10])


def test_code_is_highlighted_at_build_time(site):
    page = (site / "index.html").read_text()
    # Pygments' token spans in the HTML itself (bash's comment: c1): nothing highlights it in the browser
    assert re.search(r'<div class="highlight"><pre>(?:(?!</pre>).)*<span class="c1">#', page, re.DOTALL)


def test_api_reference_links_every_role(site):
    page = (site / "api" / "index.html").read_text()
    raw = [page[m.start() - 40 : m.end() + 40] for m in ROLE_LEFT.finditer(page)]
    assert not raw, f"raw Sphinx roles on the API page: {raw[:5]}"
    unlinked = sorted(set(re.findall(r'<span title="(mimkit[\w.]*)"><code>', page)))
    assert not unlinked, f"docstrings on the API page name {unlinked}: add them to docs/api.md"
    # create_encoder's docstring says "one of :func:`list_encoders`"
    assert re.search(
        r'<a class="autorefs autorefs-internal"[^>]* href="#mimkit.models.registry.list_encoders">', page
    )


def test_roles_resolve_as_sphinx_does():
    griffe = pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "_ext" / "sphinx_roles.py")
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    modules = {
        "core.py": "def helper(): ...\nclass Thing:\n    def run(self): ...\n",
        "api.py": "from pkg.core import Thing\n",
    }
    with griffe.temporary_visited_package("pkg", modules) as pkg:
        coll = pkg.modules_collection

        def ref(path: str, shown: str) -> str:
            return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

        assert roles.rewrite(":class:`Thing`", pkg["api"], coll) == ref("pkg.core.Thing", "Thing")  # imported
        assert roles.rewrite(":func:`~pkg.core.helper`", pkg["api"], coll) == ref("pkg.core.helper", "helper")
        assert roles.rewrite(":meth:`run()`", pkg["core.Thing"], coll) == ref("pkg.core.Thing.run", "run()")
        assert roles.rewrite(":mod:`pkg.core`", pkg["api"], coll) == ref("pkg.core", "pkg.core")
        assert roles.rewrite(":func:`helper`", pkg["api"], coll) == "<code>helper</code>"  # not in scope
    url = "https://docs.pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.train"
    assert roles.torch_url("nn.Module.train") == url
    assert roles.torch_url("torch.compile").endswith("/torch.compile.html#torch.compile")
