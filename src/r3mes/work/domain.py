"""The DOMAIN corpus the network fine-tunes on: Python standard library source code.

The shipped base model is pretrained on Python *documentation* prose; its adapters are tuned
on Python *source code*, a different distribution, so held-out loss shows whether the network's
work is useful. Source: the running interpreter's standard library (`sysconfig` "stdlib"
path), a fixed, sorted list of single-file modules, distributed under the Python Software
Foundation License (PSF-2.0), which permits redistribution of derived works with the licence
notice. Each text is one module file, prefixed with a `# file: <name>.py` line; files are read
as UTF-8. The corpus depends on the interpreter's version (recorded by `domain_corpus_source`),
so a network pins the dataset by CID, not by rebuilding it.
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

from r3mes.work.errors import DatasetError

DOMAIN_MODULES: tuple[str, ...] = tuple(
    sorted(
        """abc argparse ast base64 bisect calendar colorsys contextlib copy csv dataclasses
        difflib enum fnmatch fractions functools glob heapq hmac ipaddress keyword linecache
        numbers operator optparse pprint queue random shlex shutil statistics string textwrap
        tokenize traceback types typing uuid weakref""".split()
    )
)
DOMAIN_LICENSE = "PSF-2.0"


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def domain_corpus_source() -> str:
    """A one-line record of where the corpus came from (interpreter version, licence, list)."""
    return (
        f"CPython {platform.python_version()} standard library source "
        f"({len(DOMAIN_MODULES)} modules: {', '.join(DOMAIN_MODULES)}), licence {DOMAIN_LICENSE}"
    )


def build_domain_corpus(modules: tuple[str, ...] = DOMAIN_MODULES) -> list[str]:
    """The corpus texts, one per module, in sorted module order (deterministic)."""
    root = stdlib_dir()
    texts = []
    for name in sorted(modules):
        path = root / f"{name}.py"
        try:
            body = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DatasetError(
                f"standard library module {name!r} not found at {path}; the domain corpus needs "
                "a CPython install with its source files"
            ) from exc
        texts.append(f"# file: {name}.py\n{body}")
    return texts
