"""The block claim's selector, written by ``block_claim`` and read back by ``block_size``."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_dra_driver.classes import BLOCKS_CLASS, block_claim, block_size, cores_expression


@pytest.mark.parametrize("cores", [1, 4, 16, 64])
def test_block_size_reads_back_what_block_claim_wrote(cores: int) -> None:
    assert block_size(block_claim("c", cores)) == cores


def _claim(cls: str, expression: str, count: int | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {
        "deviceClassName": cls,
        "selectors": [{"cel": {"expression": expression}}],
    }
    if count is not None:
        exactly["count"] = count
    return {"spec": {"devices": {"requests": [{"name": "r", "exactly": exactly}]}}}


SIZE = cores_expression  # the selector block_claim writes, of a given size
OTHERS = [
    ("another-class", _claim("gpu.example.com", SIZE(4)), 0),
    ("no-size", _claim(BLOCKS_CLASS, 'device.attributes["x"].model == "a"'), 0),
    ("not-digits", _claim(BLOCKS_CLASS, SIZE(0)[:-1] + "\u0664"), 0),
    ("two-blocks", _claim(BLOCKS_CLASS, SIZE(2), 2), 4),
    ("empty", {}, 0),
]


@pytest.mark.parametrize(("claim", "expected"), [o[1:] for o in OTHERS], ids=[o[0] for o in OTHERS])
def test_block_size_counts_only_sized_blocks_of_the_driver(
    claim: dict[str, Any], expected: int
) -> None:
    assert block_size(claim) == expected
