"""Evaluate a semantic router on labelled prompts and calibrate per-route thresholds.

The labelled file is JSON Lines, one object per line: ``{"text": "...", "route": "code"}``,
with ``"route": null`` for prompts that belong to the base model.

The best-scoring route of a prompt does not depend on thresholds, so each route's
threshold can be calibrated alone: among the prompts whose best route it is, choose the
cut that maximises that route's F1 (ties broken by overall accuracy, then by the higher
threshold, which sends fewer prompts to an adapter). When routing nothing to a route is
best (none of its prompts is labelled with it), its threshold becomes `ROUTE_OFF`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from r3mes.serve.errors import RouterError
from r3mes.serve.router import ROUTE_OFF, Route, RouteDecision, SemanticRouter, decide_with

MAX_LABELLED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LabelledPrompt:
    text: str
    route: str | None
    """The expected route name, or None for the base model."""


@dataclass(frozen=True)
class RouteCalibration:
    route: str
    current_threshold: float
    best_threshold: float
    f1: float
    """F1 of this route at best_threshold."""
    support: int
    """Prompts labelled with this route."""


@dataclass(frozen=True)
class RouteEvaluation:
    accuracy: float
    """Accuracy with the thresholds in the route file."""
    calibrated_accuracy: float
    """Accuracy with every route at its best threshold."""
    routes: tuple[RouteCalibration, ...]
    total: int


def load_labelled(path: Path, routes: Sequence[Route]) -> list[LabelledPrompt]:
    """Read a JSONL labelled set; every label must name a route (or be null)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RouterError(f"cannot read labelled file {path}: {exc}") from exc
    if len(raw) > MAX_LABELLED_BYTES:
        raise RouterError(f"labelled file {path} is larger than {MAX_LABELLED_BYTES} bytes")
    names = {r.name for r in routes}
    out = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise RouterError(f"{path}:{n}: not valid JSON: {exc}") from exc
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise RouterError(f'{path}:{n}: expected {{"text": str, "route": str | null}}')
        label = item.get("route")
        if label is not None and label not in names:
            raise RouterError(f"{path}:{n}: route {label!r} is not in the route file")
        out.append(LabelledPrompt(text=item["text"], route=label))
    if not out:
        raise RouterError(f"{path} holds no labelled prompts")
    return out


def evaluate(router: SemanticRouter, labelled: Sequence[LabelledPrompt]) -> RouteEvaluation:
    """Accuracy of `router` on `labelled`, plus the best threshold of each route."""
    scores = router.scores([p.text for p in labelled])  # (N, R)
    labels = [p.route for p in labelled]
    routes = router.routes
    current = [r.threshold for r in routes]
    calibrations = []
    best = list(current)
    for i in range(len(routes)):
        cal = _calibrate(scores, labels, routes, current, i)
        best[i] = cal.best_threshold
        calibrations.append(cal)
    return RouteEvaluation(
        accuracy=_accuracy(scores, labels, routes, current),
        calibrated_accuracy=_accuracy(scores, labels, routes, best),
        routes=tuple(calibrations),
        total=len(labelled),
    )


def _accuracy(
    scores: torch.Tensor,
    labels: Sequence[str | None],
    routes: Sequence[Route],
    thresholds: Sequence[float],
) -> float:
    decisions = decide_with(scores, routes, thresholds)
    hits = sum(_chosen(d) == label for d, label in zip(decisions, labels, strict=True))
    return hits / len(labels)


def _chosen(decision: RouteDecision) -> str | None:
    """The route a decision sends the prompt to (None: the base model)."""
    return decision.route if decision.adapter is not None else None


def _calibrate(
    scores: torch.Tensor,
    labels: Sequence[str | None],
    routes: Sequence[Route],
    thresholds: Sequence[float],
    i: int,
) -> RouteCalibration:
    name = routes[i].name
    best_score, best_idx = scores.max(dim=1)
    mine = [float(s) for s, j in zip(best_score.tolist(), best_idx.tolist(), strict=True) if j == i]
    candidates = sorted(set(mine)) + [ROUTE_OFF]  # the last one routes nothing here
    support = sum(label == name for label in labels)
    ranked = []
    for t in candidates:
        trial = list(thresholds)
        trial[i] = t
        f1 = _f1(decide_with(scores, routes, trial), labels, routes[i])
        ranked.append((f1, _accuracy(scores, labels, routes, trial), t))
    f1, _, threshold = max(ranked)
    return RouteCalibration(
        route=name,
        current_threshold=thresholds[i],
        best_threshold=threshold,
        f1=f1,
        support=support,
    )


def _f1(decisions: Sequence[RouteDecision], labels: Sequence[str | None], route: Route) -> float:
    tp = fp = fn = 0
    for d, label in zip(decisions, labels, strict=True):
        predicted = _chosen(d) == route.name
        actual = label == route.name
        tp += predicted and actual
        fp += predicted and not actual
        fn += actual and not predicted
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
