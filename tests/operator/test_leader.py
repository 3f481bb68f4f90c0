"""Lease decisions (pure) and the HTTP endpoint of metrics and health."""

from __future__ import annotations

import datetime
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from neuron_operator.httpserver import create_server
from neuron_operator.leader import may_take, parse_time

NOW = datetime.datetime(2026, 11, 26, 5, 0, 0, tzinfo=datetime.UTC)


def ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("empty-lease", {}, True),
    ("released-lease", {"leaseDurationSeconds": 15}, True),
    ("ours", {"holderIdentity": "me", "renewTime": ago(1), "leaseDurationSeconds": 15}, True),
    (
        "other-fresh",
        {"holderIdentity": "b", "renewTime": ago(5), "leaseDurationSeconds": 15},
        False,
    ),
    (
        "other-expired",
        {"holderIdentity": "b", "renewTime": ago(16), "leaseDurationSeconds": 15},
        True,
    ),
    (
        "other-acquired-only",
        {"holderIdentity": "b", "acquireTime": ago(3), "leaseDurationSeconds": 15},
        False,
    ),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_may_take(spec: dict[str, Any], expected: bool) -> None:
    assert may_take(spec, "me", NOW) is expected


def test_parse_time_forms() -> None:
    assert parse_time("2026-11-26T05:00:00.000000Z") == NOW
    assert parse_time("2026-11-26T05:00:00+00:00") == NOW
    assert parse_time(NOW.replace(tzinfo=None)) == NOW
    assert parse_time(None) is None


@pytest.fixture
def server() -> Iterator[tuple[str, list[bool]]]:
    health = [True]
    srv = create_server("127.0.0.1", 0, lambda: health[0])
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", health
    srv.shutdown()
    srv.server_close()
    thread.join()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        error.close()
        return error.code, body


def test_metrics_and_health(server: tuple[str, list[bool]]) -> None:
    base, health = server
    code, text = get(base + "/metrics")
    assert code == 200 and "neuron_operator_reconciles_total" in text
    assert get(base + "/healthz") == (200, "ok\n")
    health[0] = False
    assert get(base + "/healthz") == (503, "unhealthy\n")
    assert get(base + "/nope")[0] == 404
