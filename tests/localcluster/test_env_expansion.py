"""``$(VAR)`` references, expanded as the kubelet does."""

from __future__ import annotations

import pytest

from neuron_localcluster.env_expansion import expand, expand_all

DEFINED = {"PORT": "8000", "HOST": "127.0.0.9", "EMPTY": "", "A": "$(B)"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("--port=$(PORT)", "--port=8000"),
        ("$(HOST):$(PORT)", "127.0.0.9:8000"),
        ("$(PORT)$(PORT)", "80008000"),
        ("x$(EMPTY)y", "xy"),
        ("--port=$(MISSING)", "--port=$(MISSING)"),
        ("$$(PORT)", "$(PORT)"),
        ("$$$(PORT)", "$8000"),
        ("$$$$(PORT)", "$$(PORT)"),
        ("cost: $$5", "cost: $5"),
        ("$PORT", "$PORT"),
        ("${PORT}", "${PORT}"),
        ("50$", "50$"),
        ("$", "$"),
        ("$(PORT", "$(PORT"),
        ("$($(PORT)", "$($(PORT)"),
        ("$()", "$()"),
        ("$(A)", "$(B)"),
        ("no references", "no references"),
        ("", ""),
    ],
    ids=[
        "one",
        "two",
        "repeated",
        "defined-empty",
        "unknown-stays",
        "escaped",
        "escaped-dollar-then-reference",
        "two-escapes",
        "escaped-lone-dollar",
        "dollar-name-without-parens",
        "braces-are-not-references",
        "trailing-dollar",
        "lone-dollar",
        "unclosed",
        "unclosed-then-closed",
        "empty-name",
        "values-are-not-expanded-again",
        "plain",
        "empty",
    ],
)
def test_expand(value: str, expected: str) -> None:
    assert expand(value, DEFINED) == expected


def test_expand_all_keeps_order_and_turns_numbers_into_text() -> None:
    assert expand_all(["serve", "--port=$(PORT)", 3], DEFINED) == ["serve", "--port=8000", "3"]
