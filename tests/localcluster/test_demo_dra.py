"""The demo's core map under ``--allocation dra``: device names of the driver back to cores."""

from __future__ import annotations

import pytest

from neuron_dra_driver.layout import Block
from neuron_localcluster.demo import block_cores


@pytest.mark.parametrize(
    ("first", "size"),
    [(3, 1), (0, 6), (14, 2), (32, 32)],
    ids=["one-core", "six-from-zero", "top-pair", "upper-half-of-64"],
)
def test_block_cores_reads_the_driver_device_names(first: int, size: int) -> None:
    block = Block(first, size)
    assert block_cores(block.name) == list(range(first, first + size))
