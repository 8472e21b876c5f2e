"""The offline pretraining corpus: Python standard library documentation (PSF licence).

Two sources, both shipped with every CPython and read without importing anything:

* `pydoc_data.topics.topics` - the language reference topics behind `help()`;
* docstrings of stdlib modules, classes and functions, read from the `.py` sources with
  `ast` (no module is imported, so nothing runs).

`build_corpus()` returns documents in a deterministic order. `split_corpus()` assigns each
document to train or held-out by the SHA-256 of its text (about 1 in 20 held out), so the
split is the same wherever the same documents are built, whatever their order.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

HELDOUT_MODULUS = 20
"""A document is held out when sha256(text) mod HELDOUT_MODULUS == 0."""
MIN_DOCSTRING_CHARS = 40
SKIPPED_TOP_LEVEL = frozenset(
    {"site-packages", "dist-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo"}
)
SOURCES = (
    "pydoc_data.topics.topics: Python language reference topics (PSF License Version 2)",
    "docstrings of CPython standard library modules/classes/functions (PSF License Version 2)",
)


def topic_documents() -> list[str]:
    """The `help()` topics, one document each, sorted by topic name."""
    from pydoc_data.topics import topics

    return [f"{name}\n\n{text.strip()}" for name, text in sorted(topics.items()) if text.strip()]


def _stdlib_sources(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIPPED_TOP_LEVEL or "tests" in rel.parts or "test" in rel.parts:
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        yield module, path


def _docstrings(module: str, tree: ast.Module) -> Iterator[str]:
    def visit(node: ast.AST, prefix: str) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    yield f"{name}\n\n{doc.strip()}"
                yield from visit(child, name)

    doc = ast.get_docstring(tree)
    if doc and len(doc) >= MIN_DOCSTRING_CHARS:
        yield f"{module}\n\n{doc.strip()}"
    yield from visit(tree, module)


def docstring_documents(stdlib: Path | None = None) -> list[str]:
    """Docstrings of the stdlib sources under `stdlib`, in sorted file and source order."""
    root = stdlib or Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for module, path in _stdlib_sources(root):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        docs.extend(_docstrings(module, tree))
    return docs


def build_corpus() -> list[str]:
    """All documents: topics first, then docstrings; deterministic for one Python version."""
    return topic_documents() + docstring_documents()


def is_heldout(text: str) -> bool:
    """True when `text` belongs to the held-out split."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def split_corpus(docs: list[str]) -> tuple[list[str], list[str]]:
    """(train, heldout), each keeping the input order."""
    train = [d for d in docs if not is_heldout(d)]
    heldout = [d for d in docs if is_heldout(d)]
    return train, heldout
