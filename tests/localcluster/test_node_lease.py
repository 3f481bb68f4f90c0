"""The emulated node's Lease: its manifest, and when it is renewed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from neuron_localcluster.kube import ApiException
from neuron_localcluster.node_lease import LEASE_NAMESPACE, LEASE_SECONDS, NodeLease, lease_manifest


@pytest.mark.parametrize(
    ("now", "renew_time"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC), "2026-01-02T03:04:05.000678+00:00"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=dt.UTC), "2026-01-02T03:04:05.000001+00:00"),
    ],
    ids=["fraction-kept", "zero-fraction-made-one-microsecond"],
)
def test_lease_manifest_always_carries_a_fraction(now: dt.datetime, renew_time: str) -> None:
    assert lease_manifest("n1", now) == {
        "metadata": {"name": "n1", "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": "n1",
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": renew_time,
        },
    }


class _Coord:
    def __init__(self, patch_status: int | None = None) -> None:
        self.patch_status = patch_status
        self.calls: list[tuple[str, str]] = []

    def patch_namespaced_lease(self, name: str, namespace: str, lease: dict[str, Any]) -> None:
        self.calls.append(("patch", name))
        if self.patch_status is not None:
            raise ApiException(status=self.patch_status)

    def create_namespaced_lease(self, namespace: str, lease: dict[str, Any]) -> None:
        self.calls.append(("create", lease["metadata"]["name"]))


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 5.0, 9.9], [("patch", "n1")]),
        ([0.0, 10.0, 15.0, 20.0], [("patch", "n1")] * 3),
    ],
    ids=["once-within-ten-seconds", "again-every-ten-seconds"],
)
def test_renewal_is_due_every_ten_seconds(times: list[float], expected: list[Any]) -> None:
    clock = iter(times)
    coord = _Coord()
    lease = NodeLease(coord, "n1", clock=lambda: next(clock))  # type: ignore[arg-type]
    for _ in times:
        lease.renew()
    assert coord.calls == expected


def test_a_missing_lease_is_created() -> None:
    coord = _Coord(patch_status=404)
    assert NodeLease(coord, "n1").renew()  # type: ignore[arg-type]
    assert coord.calls == [("patch", "n1"), ("create", "n1")]


def test_other_api_errors_reach_the_caller() -> None:
    coord = _Coord(patch_status=500)
    with pytest.raises(ApiException):
        NodeLease(coord, "n1").renew()  # type: ignore[arg-type]
    assert coord.calls == [("patch", "n1")]
