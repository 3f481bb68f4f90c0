"""``NEURON_MODELS``: encoder and decoder round trip, old values read as before, clear errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuron_cores import (
    MODELS_ENV,
    ModelEntry,
    ModelListError,
    copy_name,
    decode_models,
    encode_models,
    is_model_name,
    parse_model_pair,
)

OLD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def old_decode(value: str) -> tuple[ModelEntry, ...] | None:
    """The decoder of every release before the separated form, kept as the reference (None:
    refused).  Every value it accepted must decode to the same models today."""
    entries = []
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, path = item.strip().partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path or not OLD_NAME.match(name):
            return None
        entries.append(ModelEntry(name, path))
    return tuple(entries)


def pairs(*items: tuple[str, str]) -> tuple[ModelEntry, ...]:
    return tuple(ModelEntry(n, p) for n, p in items)


ROUND_TRIPS = [
    ("one", pairs(("resnet", "/models/resnet50")), "resnet=/models/resnet50"),
    ("copies-in-order", pairs(("a", "/m/a"), ("b", "/m/b"), ("a", "/m/a")), "a=/m/a,b=/m/b,a=/m/a"),
    ("equals-in-path", pairs(("a", "/m/x=1"), ("b", "/m/=")), "a=/m/x=1,b=/m/="),
    (
        "unicode-path",
        pairs(
            ("a", "/modèles/ü"),
        ),
        "a=/modèles/ü",
    ),
    ("backslash-stays-plain", pairs(("a", "/m\\x"), ("b", "/y\\")), "a=/m\\x,b=/y\\"),
    ("comma-in-path", pairs(("a", "/m/x,y"), ("b", "/m/z")), ";a=/m/x,y;b=/m/z"),
    (
        "comma-and-semicolon",
        pairs(
            ("a", "/m/x,y;z"),
        ),
        "|a=/m/x,y;z",
    ),
    ("edge-spaces-kept", pairs(("a", "/m/x "), ("b", "/y")), ";a=/m/x ;b=/y"),
    ("empty", (), ""),
]


@pytest.mark.parametrize(
    ("entries", "encoded"), [c[1:] for c in ROUND_TRIPS], ids=[c[0] for c in ROUND_TRIPS]
)
def test_encode_then_decode(entries: tuple[ModelEntry, ...], encoded: str) -> None:
    assert encode_models(entries) == encoded
    assert decode_models(encoded) == entries


def test_paths_holding_every_ascii_separator_get_one_beyond_ascii() -> None:
    everything = "".join(chr(c) for c in range(0x21, 0x7F))
    entries = pairs(("a", "/" + everything), ("b", "/m/b"))
    encoded = encode_models(entries)
    assert not encoded[0].isascii()
    assert decode_models(encoded) == entries


OLD_VALUES = [
    ("plain", "a=/m/a", pairs(("a", "/m/a"))),
    ("spaces", " a = /m/a , ", pairs(("a", "/m/a"))),
    ("leading-comma", ",a=/m/a", pairs(("a", "/m/a"))),
    ("empty-pairs", "a=/x,,b=/y,", pairs(("a", "/x"), ("b", "/y"))),
    ("blank", "  ", ()),
    # A backslash never escaped anything: it stays in the path, and a comma after it separates.
    ("backslash-comma", "a=/x\\,b=/y", pairs(("a", "/x\\"), ("b", "/y"))),
    ("double-backslash", "a=/x\\\\y", pairs(("a", "/x\\\\y"))),
    ("semicolon-in-path", "a=/x;y", pairs(("a", "/x;y"))),
    ("unicode", "a=/ü,b=/数据", pairs(("a", "/ü"), ("b", "/数据"))),
    ("tab-first", "\ta=/x", pairs(("a", "/x"))),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in OLD_VALUES], ids=[c[0] for c in OLD_VALUES]
)
def test_old_values_read_as_before(value: str, expected: tuple[ModelEntry, ...]) -> None:
    assert old_decode(value) == expected
    assert decode_models(value) == expected


names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,8}\Z")
old_paths = st.text(st.characters(exclude_characters=",\0"), min_size=1, max_size=12)
pads = st.text(" \t", max_size=2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(pads, names, pads, old_paths, pads), max_size=5), pads)
def test_every_value_the_old_decoder_accepted_reads_the_same(
    items: list[tuple[str, str, str, str, str]], tail: str
) -> None:
    value = ",".join(f"{a}{n}{b}={p}{c}" for a, n, b, p, c in items) + tail
    old = old_decode(value)
    if old is None:
        with pytest.raises(ModelListError):
            decode_models(value)
    else:
        assert decode_models(value) == old


any_paths = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(ModelEntry, names, any_paths), max_size=6))
def test_any_models_round_trip(entries: list[ModelEntry]) -> None:
    encoded = encode_models(entries)
    assert decode_models(encoded) == tuple(entries)
    if old_decode(encoded) is not None and all("," not in e.path for e in entries):
        # What the old decoder reads, it reads the same: older runtimes keep working.
        assert old_decode(encoded) == tuple(entries)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(ModelEntry, names, any_paths), min_size=1, max_size=6))
def test_encoding_costs_no_more_than_name_path_and_two_per_pair(entries: list[ModelEntry]) -> None:
    # The operator bounds a pod's NEURON_MODELS by this sum (operator/api.py, the CRD's rule).
    bound = sum(len(e.name) + len(e.path) + 2 for e in entries)
    assert len(encode_models(entries)) <= bound


BAD_VALUES = [
    ("no-separator", "a", "'a'"),
    ("no-path", "a=", "'a='"),
    ("no-name", "=p", "'=p'"),
    ("space-in-name", "a b=p", "'a b=p'"),
    ("dash-first", "-a=p", "'-a=p'"),
    ("slash-in-name", "a/b=p", "'a/b=p'"),
    ("underscore-first", "_a=/x", "'_a=/x'"),
    ("second-pair", "a=/x,b", "'b'"),
    ("separated-no-path", ";a=;b=/y", "'a='"),
    ("separated-untrimmed-name", "; a=/x", "' a=/x'"),
    ("separated-hash-name", ";a#2=/x", "'a#2=/x'"),
]


@pytest.mark.parametrize(
    ("value", "named"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES]
)
def test_bad_values_name_the_pair_and_the_accepted_forms(value: str, named: str) -> None:
    with pytest.raises(ModelListError) as caught:
        decode_models(value)
    message = str(caught.value)
    assert message.startswith(MODELS_ENV)
    assert named in message
    assert "is not NAME=PATH" in message
    assert "comma-separated NAME=PATH pairs" in message
    assert "a separator that is also the first character" in message


def test_flag_pairs_are_trimmed_and_their_errors_name_the_flag() -> None:
    assert parse_model_pair(" a = /m/a ", "--model") == ModelEntry("a", "/m/a")
    with pytest.raises(ModelListError, match=r"^--model: 'a' is not NAME=PATH"):
        parse_model_pair("a", "--model")


UNWRITABLE = [
    ("bad-name", ModelEntry("a b", "/x"), "'a b'"),
    ("copy-name", ModelEntry("a#2", "/x"), "'a#2'"),
    ("empty-path", ModelEntry("a", ""), "''"),
    ("nul-in-path", ModelEntry("a", "/x\0"), "'/x\\x00'"),
]


@pytest.mark.parametrize(
    ("entry", "named"), [c[1:] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE]
)
def test_encoder_refuses_what_no_runtime_could_read(entry: ModelEntry, named: str) -> None:
    with pytest.raises(ModelListError, match=re.escape(named)) as caught:
        encode_models([ModelEntry("ok", "/ok"), entry])
    assert "non-empty path without NUL" in str(caught.value)


COPY_NAMES = [("first", "resnet", 1, "resnet"), ("second", "resnet", 2, "resnet#2")]


@pytest.mark.parametrize(
    ("name", "ordinal", "expected"), [c[1:] for c in COPY_NAMES], ids=[c[0] for c in COPY_NAMES]
)
def test_copy_name(name: str, ordinal: int, expected: str) -> None:
    assert copy_name(name, ordinal) == expected


@given(names, st.integers(2, 10_000))
def test_a_further_copy_never_takes_a_model_name(name: str, ordinal: int) -> None:
    assert not is_model_name(copy_name(name, ordinal))


def test_copy_ordinals_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1, got 0"):
        copy_name("a", 0)
