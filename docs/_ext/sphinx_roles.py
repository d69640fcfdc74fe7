"""A Griffe extension that turns Sphinx roles in docstrings into mkdocstrings cross-references.

mimkit's docstrings name other objects the Sphinx way (:func:`list_encoders`, :class:`~mimkit.x.Y`),
which reads well in `help()` and in an editor. mkdocstrings does not know these roles, so the API
reference would show them raw; this extension rewrites each one, once the package is loaded, into
an mkdocstrings cross-reference to the object's path, resolving the name as Sphinx does: relative to
the object that holds the docstring (its members, its class, its module and what the module imports),
else as a full path; a re-export links to the object it names. A leading ``~`` shows the last part only.
The reference is a link where the site documents the target, else the name in code with the path as its
tooltip (tests/test_docs.py requires the API page to link every one). Names from PyTorch
(``nn.Module.train``, ``torch.compile``) link to PyTorch's documentation. A name that resolves to nothing
is logged as a warning, so `mkdocs build --strict` fails on it instead of printing it raw.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`(~?)([A-Za-z_][\w.]*)(\(\))?`")
TORCH_DOCS = "https://docs.pytorch.org/docs/stable/generated/"
# a logger under "mkdocs" so that `--strict` counts its warnings
log = logging.getLogger("mkdocs.plugins.mimkit.sphinx_roles")


def torch_url(name: str) -> str | None:
    """PyTorch's page for ``nn.X``/``torch.X`` names, None for other names.

    The page is named after the dotted path up to the first capitalised part (a class) and the anchor
    is the full path: ``nn.Module.train`` -> ``torch.nn.Module.html#torch.nn.Module.train``.
    """
    if name.startswith("nn."):
        name = "torch." + name
    if not name.startswith("torch."):
        return None
    parts = name.split(".")
    cls = next((i for i, part in enumerate(parts) if part[:1].isupper()), len(parts) - 1)
    return f"{TORCH_DOCS}{'.'.join(parts[: cls + 1])}.html#{name}"


def resolve(obj: griffe.Object, name: str, collection: griffe.ModulesCollection) -> str | None:
    """The path of the object `name` refers to in `obj`'s docstring (a re-export: its target), or None."""
    first, _, rest = name.partition(".")
    try:
        path = obj.resolve(first)  # a member, something in an enclosing scope or an import
        path = f"{path}.{rest}" if rest else path
    except griffe.NameResolutionError:
        path = name  # a full path
    try:
        target = collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if target.is_alias:  # a re-export (mimkit.load_weights): link to where it is documented
        target = target.final_target
    return target.path


def rewrite(text: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str:
    """`text` with each Sphinx role replaced by a cross-reference or a link."""

    def replace(match: re.Match[str]) -> str:
        tilde, name, call = match.groups()
        shown = f"<code>{(name.rsplit('.', 1)[-1] if tilde else name)}{call or ''}</code>"
        url = torch_url(name)
        if url:
            return f'<a href="{url}">{shown}</a>'
        path = resolve(obj, name, collection)
        if path is None:
            log.warning("%s: %s names nothing in the package; write its full path", obj.path, match.group(0))
            return shown
        # optional: a link where the API reference shows the target, else the code with its path
        return f'<autoref identifier="{path}" optional>{shown}</autoref>'

    return ROLE.sub(replace, text)


def walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """`obj` and everything defined in it (not what it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring in a package once all of it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader.modules_collection)
