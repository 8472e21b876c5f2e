"""Sampling parameters, token choice and incremental detokenisation with stop strings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.serve.errors import InvalidRequest
from r3mes.serve.sampling import IncrementalText, SamplingParams, choose_token


def chars(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def feed(text: IncrementalText, s: str) -> str:
    return "".join(text.add(ord(c)) for c in s)


def test_incremental_text_emits_everything_without_stop() -> None:
    text = IncrementalText(chars, ())
    assert feed(text, "hello") == "hello"
    assert text.flush() == ""


def test_stop_string_is_cut_and_never_emitted() -> None:
    text = IncrementalText(chars, ("END",))
    out = feed(text, "abcEN")
    assert out == "abc"  # "EN" held back: it may start "END"
    out += text.add(ord("D"))
    assert text.stopped
    assert out + text.flush() == "abc"


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    text = IncrementalText(chars, ("END",))
    out = feed(text, "abENx")
    assert not text.stopped
    assert out + text.flush() == "abENx"


def test_earliest_of_several_stop_strings_wins() -> None:
    text = IncrementalText(chars, ("zz", "yy"))
    feed(text, "ayyzz")
    assert text.stopped and text.text == "a"


def test_incomplete_utf8_is_held_until_complete() -> None:
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    text = IncrementalText(decode, ())
    euro = "\u20ac".encode()
    assert text.add(euro[0]) == ""
    assert text.add(euro[1]) == ""
    assert text.add(euro[2]) == "\u20ac"


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    gen = SamplingParams().make_generator()
    assert choose_token(logits, SamplingParams(temperature=0.0), gen) == 1


def test_seeded_sampling_repeats_and_top_k_one_is_greedy() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, seed=7)
    first = [choose_token(logits, params, g) for g in [params.make_generator()] for _ in range(20)]
    second = [choose_token(logits, params, g) for g in [params.make_generator()] for _ in range(20)]
    assert first == second
    assert len(set(first)) > 1
    top1 = SamplingParams(temperature=1.0, top_k=1, seed=3)
    assert choose_token(logits, top1, top1.make_generator()) == int(logits.argmax())


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.tensor([10.0, 9.0, -10.0, -10.0])
    params = SamplingParams(temperature=1.0, top_p=0.5, seed=1)
    gen = params.make_generator()
    assert {choose_token(logits, params, gen) for _ in range(30)} == {0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"temperature": 3.0},
        {"top_p": 0.0},
        {"top_k": -1},
        {"seed": -5},
        {"stop": ("",)},
        {"stop": tuple("abcdefghijklmnopq")},
    ],
)
def test_bad_sampling_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@given(
    text=st.text(alphabet="abcXY\u00e9\u20ac", max_size=40),
    stops=st.lists(st.text(alphabet="abcXY", min_size=1, max_size=4), max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_streamed_text_is_the_text_cut_at_the_first_stop(text: str, stops: list[str]) -> None:
    """Whatever the split into tokens (UTF-8 bytes here), the deltas add up to the text
    cut where the first stop string completes."""

    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    stream = IncrementalText(decode, stops)
    out = ""
    for byte in text.encode():
        out += stream.add(byte)
        if stream.stopped:
            break
    out += stream.flush()
    assert out == first_stop_cut(text, stops)
    assert stream.stopped == any(s in text for s in stops)


def first_stop_cut(text: str, stops: list[str]) -> str:
    """Generation stops as soon as some stop string is complete (as OpenAI and vLLM do)."""
    for end in range(1, len(text) + 1):
        seen = [i for s in stops if (i := text[:end].find(s)) >= 0]
        if seen:
            return text[: min(seen)]
    return text
