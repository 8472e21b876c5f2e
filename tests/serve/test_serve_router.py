"""Route files, the semantic router, evaluation and threshold calibration."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from r3mes.serve.errors import RouterError
from r3mes.serve.route_eval import LabelledPrompt, evaluate, load_labelled
from r3mes.serve.router import (
    ROUTE_OFF,
    Route,
    SemanticRouter,
    load_routes,
    minilm_embedder,
    parse_routes,
    routes_to_doc,
)

AXES = ("python", "code", "court", "law")


def axis_embedder(texts: Sequence[str]) -> torch.Tensor:
    """Keyword counts on four axes plus a small constant: predictable cosine scores."""
    return torch.tensor([[float(t.count(a)) for a in AXES] + [0.2] for t in texts])


ROUTES = (
    Route(name="code", adapter="coder", examples=("python code",), threshold=0.5),
    Route(name="law", adapter="lawyer", examples=("court law",), threshold=0.5),
)


def test_router_picks_best_route_and_falls_back_below_threshold() -> None:
    router = SemanticRouter(ROUTES, axis_embedder)
    hit = router.route("python code please")
    assert (hit.adapter, hit.route) == ("coder", "code") and hit.score > 0.9
    law = router.route("the court")
    assert law.adapter == "lawyer"
    miss = router.route("the weather")
    assert miss.adapter is None and miss.score < 0.5


def test_toml_and_json_route_files(tmp_path: Path) -> None:
    toml = tmp_path / "routes.toml"
    toml.write_text(
        'default_threshold = 0.3\n[[routes]]\nname = "code"\nexamples = ["a", "b"]\n'
        '[[routes]]\nname = "law"\nadapter = "lawyer"\nthreshold = 0.7\nexamples = ["c"]\n'
    )
    routes = load_routes(toml)
    assert [(r.name, r.adapter, r.threshold) for r in routes] == [
        ("code", "code", 0.3),
        ("law", "lawyer", 0.7),
    ]
    as_json = tmp_path / "routes.json"
    as_json.write_text(json.dumps(routes_to_doc(routes)))
    assert load_routes(as_json) == routes


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "'routes' list"),
        ({"routes": []}, "no routes"),
        ({"routes": [{"name": "a"}]}, "examples"),
        ({"routes": [{"name": "a", "examples": []}]}, "no examples"),
        ({"routes": [{"name": "a", "examples": ["x"], "threshold": "high"}]}, "number"),
        ({"routes": [{"name": "a", "examples": ["x"], "colour": 1}]}, "unknown keys"),
        ({"routes": [{"name": "a", "examples": ["x"]}] * 2}, "unique"),
        ({"routes": [{"name": "a", "adapter": "bad name", "examples": ["x"]}]}, "invalid"),
        ({"routes": [{"name": "a", "examples": ["x"], "threshold": 3}]}, r"\[-1, 1\]"),
        ({"routes": [{"name": "a", "examples": ["x"], "threshold": 1.001}]}, "switch the route"),
    ],
)
def test_malformed_route_documents(doc: object, match: str) -> None:
    with pytest.raises(RouterError, match=match):
        parse_routes(doc)


def test_unreadable_route_file(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="cannot read"):
        load_routes(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(RouterError, match="not valid"):
        load_routes(bad)


def test_evaluation_and_calibration() -> None:
    loose = tuple(
        Route(name=r.name, adapter=r.adapter, examples=r.examples, threshold=-1.0) for r in ROUTES
    )
    router = SemanticRouter(loose, axis_embedder)
    labelled = [
        LabelledPrompt("python code", "code"),
        LabelledPrompt("python", "code"),
        LabelledPrompt("court law", "law"),
        LabelledPrompt("law", "law"),
        LabelledPrompt("hello there", None),  # best route is a tie at a low score
        LabelledPrompt("nothing here", None),
    ]
    result = evaluate(router, labelled)
    assert result.total == 6
    assert result.accuracy == pytest.approx(4 / 6)  # threshold -1 routes everything
    assert result.calibrated_accuracy == 1.0
    for cal in result.routes:
        assert cal.f1 == 1.0 and cal.support == 2
        assert 0.2 < cal.best_threshold <= 0.99


def test_calibration_switches_off_a_route_nothing_belongs_to() -> None:
    loose = tuple(
        Route(name=r.name, adapter=r.adapter, examples=r.examples, threshold=-1.0) for r in ROUTES
    )
    router = SemanticRouter(loose, axis_embedder)
    labelled = [  # prompts that score best on "law" but belong to the base model
        LabelledPrompt("python code", "code"),
        LabelledPrompt("court law", None),
        LabelledPrompt("law", None),
    ]
    result = evaluate(router, labelled)
    best = {cal.route: cal.best_threshold for cal in result.routes}
    assert best["law"] == ROUTE_OFF and best["code"] <= 1.0
    assert result.calibrated_accuracy == 1.0
    tuned = [Route(r.name, r.adapter, r.examples, best[r.name]) for r in loose]
    assert parse_routes(routes_to_doc(tuned)) == tuple(tuned)  # a writable, loadable file
    off = SemanticRouter(tuned, axis_embedder)
    assert off.route("court law").adapter is None  # even an exact example match


def test_labelled_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"text": "a", "route": "code"}\n\n{"text": "b", "route": null}\n')
    assert [p.route for p in load_labelled(path, ROUTES)] == ["code", None]
    path.write_text('{"text": "a", "route": "cooking"}\n')
    with pytest.raises(RouterError, match="not in the route file"):
        load_labelled(path, ROUTES)
    path.write_text("not json\n")
    with pytest.raises(RouterError, match=":1: not valid JSON"):
        load_labelled(path, ROUTES)


@pytest.mark.slow
def test_minilm_routes_by_meaning() -> None:
    routes = (
        Route(
            name="code",
            adapter="coder",
            examples=("write a python function", "fix this bug in my code", "how do I sort a list"),
            threshold=0.35,
        ),
        Route(
            name="law",
            adapter="lawyer",
            examples=("is this contract enforceable", "what does the court decide", "sue landlord"),
            threshold=0.35,
        ),
    )
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in offline}
    router = SemanticRouter(routes, minilm_embedder())
    # offline by argument, not by switching the whole process (issue 18)
    assert {k: os.environ.get(k) for k in offline} == before
    assert router.route("my javascript program crashes with a null pointer").adapter == "coder"
    assert router.route("can my employer break the agreement I signed?").adapter == "lawyer"
    assert router.route("a recipe for banana bread").adapter is None
