"""JSON parsing with a nesting bound, for every JSON the work protocol reads from the wire.

`json.loads` recurses once per nesting level, so a few KB of ``[[[[...]]]]`` raise
`RecursionError` instead of `JSONDecodeError`. Canonical task and header JSON is at most three
levels deep, so `parse_json` measures the depth first (strings removed, brackets counted with
numpy, linear time) and refuses anything deeper than `max_depth` before the parser sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from r3mes.work.errors import WorkError

# A JSON string, or an unterminated one running to the end (so the scan stays linear).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting of `text`, brackets inside strings not counted."""
    bare = _STRING.sub("", text).encode("utf-8", "replace")
    codes = np.frombuffer(bare, dtype=np.uint8)
    steps = np.isin(codes, list(_OPEN)).astype(np.int64) - np.isin(codes, list(_CLOSE))
    return int(steps.cumsum().max()) if steps.size else 0


def parse_json(
    text: str,
    *,
    max_depth: int,
    error: type[WorkError],
    what: str,
    parse_float: Callable[[str], Any] | None = None,
) -> Any:
    """`json.loads(text)`, raising `error` (never `RecursionError`) for anything malformed."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep; at most {max_depth} are allowed")
    try:
        return json.loads(text, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # unreachable after the depth check; kept as a backstop
        raise error(f"{what} nests too deeply to parse") from exc
