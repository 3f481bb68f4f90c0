"""The operator's log setup: kopf's per-event success lines only at debug, its warnings always."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from neuron_operator.operate import KOPF_OBJECTS_LOGGER, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, objects = logging.getLogger(), logging.getLogger(KOPF_OBJECTS_LOGGER)
    saved = (root.level, list(root.handlers), objects.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    objects.setLevel(saved[2])


LEVEL_CASES = [
    ("info", "info", False, True),
    ("warning", "warning", False, True),
    ("debug", "debug", True, True),
]


@pytest.mark.parametrize(
    ("level", "success_shown", "warning_shown"),
    [c[1:] for c in LEVEL_CASES],
    ids=[c[0] for c in LEVEL_CASES],
)
def test_kopf_handler_success_lines_only_at_debug(
    level: str, success_shown: bool, warning_shown: bool
) -> None:
    configure_logging(level, "json")
    objects = logging.getLogger(KOPF_OBJECTS_LOGGER)
    assert objects.isEnabledFor(logging.INFO) is success_shown
    assert objects.isEnabledFor(logging.WARNING) is warning_shown
