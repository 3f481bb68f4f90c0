"""The publisher against an in-memory API: generations, health taints, restarts, cleanup."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_dra_driver.cli import Driver
from neuron_dra_driver.layout import UNHEALTHY_TAINT_KEY, NodeShape, check_slices
from neuron_dra_driver.publisher import (
    ConflictError,
    ExistingSlice,
    Publisher,
    PublishError,
    delete_pool,
)

SHAPE = NodeShape("inf1.6xlarge", 4, 4)


class FakeSliceApi:
    """Slices by name, with resource versions, and every write recorded."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.version = 0
        self.conflicts = 0
        self.fail_creates_after: int | None = None

    def list_slices(self, node: str) -> list[ExistingSlice]:
        return [
            ExistingSlice(
                name, body["metadata"]["resourceVersion"], body["spec"]["pool"]["generation"]
            )
            for name, body in sorted(self.slices.items())
            if body["spec"]["nodeName"] == node
        ]

    def _store(self, body: Mapping[str, Any]) -> None:
        self.version += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.slices[stored["metadata"]["name"]] = stored

    def create_slice(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if self.fail_creates_after is not None and len(self.writes) >= self.fail_creates_after:
            raise PublishError(f"create ResourceSlice {name}: the API server answered 500")
        assert name not in self.slices, f"create of existing {name}"
        self.writes.append(("create", name))
        self._store(body)

    def replace_slice(self, name: str, body: Mapping[str, Any]) -> None:
        if self.conflicts:
            self.conflicts -= 1
            self.slices[name]["metadata"]["resourceVersion"] = "moved"
            raise ConflictError(f"replace ResourceSlice {name}: 409 Conflict")
        current = self.slices[name]["metadata"]["resourceVersion"]
        assert body["metadata"]["resourceVersion"] == current, "stale resourceVersion"
        self.writes.append(("replace", name))
        self._store(body)

    def delete_slice(self, name: str) -> None:
        self.writes.append(("delete", name))
        del self.slices[name]

    def pool(self, node: str) -> list[dict[str, Any]]:
        return [b for _, b in sorted(self.slices.items()) if b["spec"]["nodeName"] == node]


def _tainted(api: FakeSliceApi, node: str) -> set[str]:
    return {
        d["name"]
        for s in api.pool(node)
        for d in s["spec"].get("devices", [])
        if any(t["key"] == UNHEALTHY_TAINT_KEY for t in d.get("taints", []))
    }


def test_first_publication_creates_the_pool_and_an_unchanged_health_writes_nothing() -> None:
    api = FakeSliceApi()
    publisher = Publisher(api, "kwok-0", SHAPE)
    assert publisher.publish(set()) is True
    assert [w[0] for w in api.writes] == ["create"] * 4
    check_slices(api.pool("kwok-0"))
    assert {s["spec"]["pool"]["generation"] for s in api.pool("kwok-0")} == {0}
    api.writes.clear()
    assert publisher.publish(set()) is False
    assert api.writes == []


def test_a_health_change_rewrites_every_slice_with_the_next_generation() -> None:
    api = FakeSliceApi()
    publisher = Publisher(api, "kwok-0", SHAPE)
    publisher.publish(set())
    api.writes.clear()
    assert publisher.publish({3}) is True
    assert sorted(w[0] for w in api.writes) == ["replace"] * 4
    assert {s["spec"]["pool"]["generation"] for s in api.pool("kwok-0")} == {1}
    assert len(_tainted(api, "kwok-0")) == 4 * 13  # blocks covering core 3 of 16
    assert "cores-0-3" in _tainted(api, "kwok-0") and "core-4" not in _tainted(api, "kwok-0")
    publisher.publish(set())  # recovery removes the taints
    assert _tainted(api, "kwok-0") == set()
    assert {s["spec"]["pool"]["generation"] for s in api.pool("kwok-0")} == {2}


def test_a_restarted_driver_continues_the_generation_and_removes_stale_slices() -> None:
    api = FakeSliceApi()
    Publisher(api, "kwok-0", NodeShape("inf1.24xlarge", 16, 4)).publish({1})  # 64 cores: 34 slices
    assert len(api.pool("kwok-0")) == 34
    Publisher(api, "kwok-1", SHAPE).publish(set())
    restarted = Publisher(api, "kwok-0", SHAPE)  # now a 16-core node: 4 slices
    restarted.publish(set())
    pool = api.pool("kwok-0")
    assert len(pool) == 4 and restarted.generation == 1
    assert {s["spec"]["pool"]["generation"] for s in pool} == {1}
    check_slices(pool)
    assert len(api.pool("kwok-1")) == 4  # another node's pool is left alone


def test_a_conflict_lists_again_and_retries() -> None:
    api = FakeSliceApi()
    publisher = Publisher(api, "kwok-0", SHAPE)
    publisher.publish(set())
    api.conflicts = 1
    assert publisher.publish({0}) is True
    check_slices(api.pool("kwok-0"))
    api.conflicts = 10
    with pytest.raises(PublishError, match="3 conflicts in a row"):
        publisher.publish({1})


def test_a_failed_publication_is_retried_in_full_on_the_next_call() -> None:
    api = FakeSliceApi()
    api.fail_creates_after = 2
    publisher = Publisher(api, "kwok-0", SHAPE)
    with pytest.raises(PublishError, match="500"):
        publisher.publish(set())
    assert publisher.published_unhealthy is None
    api.fail_creates_after = None
    assert publisher.publish(set()) is True
    assert len(api.pool("kwok-0")) == 4
    check_slices(api.pool("kwok-0"))


def test_cleanup_deletes_only_this_nodes_slices() -> None:
    api = FakeSliceApi()
    publisher = Publisher(api, "kwok-0", SHAPE)
    publisher.publish(set())
    Publisher(api, "kwok-1", SHAPE).publish(set())
    assert publisher.cleanup() == 4
    assert api.pool("kwok-0") == [] and len(api.pool("kwok-1")) == 4
    assert delete_pool(api, "kwok-0") == 0
    assert publisher.publish(set()) is True  # after cleanup, publishing starts over


def test_the_health_file_taints_and_recovery_untaints_through_the_driver(tmp_path: Path) -> None:
    health = tmp_path / "unhealthy"
    backend = SimulatedBackend.from_flags(
        instance_type="inf1.6xlarge", devices=None, cores_per_device=None, health_file=health
    )
    api = FakeSliceApi()
    driver = Driver(backend, backend.discover(), Publisher(api, "kwok-0", SHAPE))
    assert driver.step() is True
    assert _tainted(api, "kwok-0") == set()
    health.write_text("# broken\n15\n")
    assert driver.step() is True
    assert _tainted(api, "kwok-0") == {f"cores-{f}-15" if f < 15 else "core-15" for f in range(16)}
    assert driver.step() is False  # same health: no writes
    health.write_text("")
    assert driver.step() is True
    assert _tainted(api, "kwok-0") == set()


def test_a_taints_time_added_is_when_its_core_first_became_unhealthy() -> None:
    times = iter(datetime(2026, 1, 1, 0, minute, tzinfo=UTC) for minute in range(10))
    api = FakeSliceApi()
    publisher = Publisher(api, "kwok-0", SHAPE, clock=lambda: next(times))

    def added() -> dict[str, str]:
        return {
            d["name"]: d["taints"][0]["timeAdded"]
            for s in api.pool("kwok-0")
            for d in s["spec"].get("devices", [])
            if d.get("taints")
        }

    publisher.publish({3})  # 00:00
    publisher.publish({3, 5})  # 00:01: core 3's taints keep 00:00
    got = added()
    assert got["core-3"] == got["cores-3-5"] == "2026-01-01T00:00:00Z"
    assert got["core-5"] == got["cores-4-5"] == "2026-01-01T00:01:00Z"
    publisher.publish({5})  # 00:02: core 5 keeps 00:01
    assert set(added().values()) == {"2026-01-01T00:01:00Z"}
    publisher.publish({3, 5})  # 00:03: core 3 is unhealthy again, from now
    assert added()["core-3"] == "2026-01-01T00:03:00Z"
