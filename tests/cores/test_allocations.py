"""The node's core-allocation record: written and read back, bad records named precisely."""

from __future__ import annotations

import json

import pytest

from neuron_cores import AllocationRecordError, format_record, parse_record


def test_round_trip_and_holders() -> None:
    text = format_record(16, {"demo/b": [4, 5], "demo/a": [0, 1, 2, 3], "demo/gone": []}, [9])
    record = parse_record(text)
    assert record.cores == 16
    assert record.pods == {"demo/a": (0, 1, 2, 3), "demo/b": (4, 5)}
    assert record.unhealthy == (9,)
    assert record.holders()[5] == "demo/b"
    assert json.loads(text)["pods"] == {"demo/a": "0-3", "demo/b": "4-5"}
    assert format_record(16, {"demo/a": [0, 1, 2, 3], "demo/b": [4, 5]}, [9]) == text


BAD = [
    ("not-json", "{", "is not JSON"),
    ("old-version", json.dumps({"version": 0}), "is not a version 1 record"),
    ("cores", json.dumps({"version": 1, "cores": 0, "pods": {}}), "cores 0 is not 1 to"),
    ("pods", json.dumps({"version": 1, "cores": 4, "pods": []}), "pods [] is not an object"),
    (
        "core-out-of-node",
        json.dumps({"version": 1, "cores": 4, "pods": {"a/b": "3-4"}}),
        "pod a/b",
    ),
    (
        "core-held-twice",
        json.dumps({"version": 1, "cores": 4, "pods": {"a/b": "0-1", "a/c": "1"}}),
        "core 1 is held by both a/b and a/c",
    ),
    (
        "unhealthy",
        json.dumps({"version": 1, "cores": 4, "pods": {}, "unhealthy": "x"}),
        "unhealthy",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_records_are_named(text: str, fragment: str) -> None:
    with pytest.raises(AllocationRecordError) as error:
        parse_record(text, node="n1")
    assert fragment in str(error.value)
    assert "on n1" in str(error.value)
