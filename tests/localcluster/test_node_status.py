"""The emulated node's status reporting: what it posts for the Node, its pods and its cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuron_cores import ALLOCATIONS_ANNOTATION, CORE_RESOURCE, DEVICE_RESOURCE, parse_record
from neuron_device_plugin.ids import HEALTHY, UNHEALTHY, core_id
from neuron_localcluster import pods
from neuron_localcluster.dra_kubelet import ClaimHandle
from neuron_localcluster.kubelet_emulator import DeviceInfo
from neuron_localcluster.node_status import (
    StatusReporter,
    allocation_record,
    allocations_file,
    comparable,
    node_status,
    resource_counts,
    running_pod_status,
    waiting_pod_status,
)
from neuron_localcluster.nodes import NodeSpec
from neuron_localcluster.pod_supervision import RunningContainer, RunningPod

SPEC = NodeSpec("n1", "inf1.6xlarge", emulated=True)


def _cores(healthy: int, unhealthy: tuple[int, ...] = ()) -> list[DeviceInfo]:
    return [
        DeviceInfo(core_id(i), UNHEALTHY if i in unhealthy else HEALTHY)
        for i in range(healthy + len(unhealthy))
    ]


@pytest.mark.parametrize(
    ("devices", "dra", "expected"),
    [
        (
            {CORE_RESOURCE: _cores(3, (3,)), DEVICE_RESOURCE: []},
            False,
            (
                {CORE_RESOURCE: "4", DEVICE_RESOURCE: "0"},
                {CORE_RESOURCE: "3", DEVICE_RESOURCE: "0"},
            ),
        ),
        ({}, False, ({CORE_RESOURCE: "0", DEVICE_RESOURCE: "0"},) * 2),
        ({CORE_RESOURCE: _cores(4)}, True, ({}, {})),
    ],
    ids=["healthy-are-allocatable", "nothing-registered-yet", "dra-lists-none"],
)
def test_resource_counts(
    devices: dict[str, list[DeviceInfo]], dra: bool, expected: tuple[dict[str, str], ...]
) -> None:
    assert resource_counts(devices, dra=dra) == expected


def test_node_status_is_ready_with_the_nodes_capacity() -> None:
    status = node_status(
        SPEC,
        capacity={CORE_RESOURCE: "16"},
        allocatable={CORE_RESOURCE: "15"},
        stamp="2026-01-01T00:00:00Z",
        kernel="6.1",
    )
    assert status["capacity"][CORE_RESOURCE] == "16"
    assert status["allocatable"][CORE_RESOURCE] == "15"
    ((ready,),) = [status["conditions"]]
    assert (ready["type"], ready["status"], ready["lastHeartbeatTime"]) == (
        "Ready",
        "True",
        "2026-01-01T00:00:00Z",
    )
    assert status["nodeInfo"]["kernelVersion"] == "6.1"
    assert {"type": "Hostname", "address": "n1"} in status["addresses"]


def _rc(**state: Any) -> RunningContainer:
    rc = RunningContainer(
        container={"name": "c"},
        argv=["true"],
        env=dict(state.pop("env", {})),
        log_path=Path("c.log"),
        check=pods.ReadinessCheck(None),
    )
    for key, value in state.items():
        setattr(rc, key, value)
    return rc


def _pod(*containers: RunningContainer, name: str = "p", failed: str | None = None) -> RunningPod:
    return RunningPod(
        host_network=False,
        uid=f"uid-{name}",
        namespace="ns",
        name=name,
        pod_ip="127.0.0.10",
        started_at="2026-01-01T00:00:00Z",
        restart_policy="Always",
        containers=list(containers),
        failed=failed,
    )


class _Alive:
    pid = 42


@pytest.mark.parametrize(
    ("containers", "phase", "ready", "state"),
    [
        ([_rc(process=_Alive(), started_at="t", ready=True)], "Running", "True", "running"),
        ([_rc(process=_Alive(), started_at="t")], "Running", "False", "running"),
        ([_rc(last_exit=0)], "Succeeded", "False", "terminated"),
        ([_rc(last_exit=0), _rc(last_exit=2)], "Failed", "False", "terminated"),
        ([_rc(last_exit=1, restart_pending=True)], "Running", "False", "waiting"),
    ],
    ids=["ready", "not-ready-yet", "all-done", "one-failed", "crash-loop"],
)
def test_running_pod_status_follows_the_processes(
    containers: list[RunningContainer], phase: str, ready: str, state: str
) -> None:
    status = running_pod_status(_pod(*containers))
    assert status["phase"] == phase
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == ready
    assert set(status["containerStatuses"][0]["state"]) == {state}
    if state == "waiting":
        assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"


def test_a_pod_that_cannot_run_is_failed_with_the_reason() -> None:
    status = running_pod_status(_pod(failed="no device plugin registered x on this node"))
    assert (status["phase"], status["reason"]) == ("Failed", "UnexpectedAdmissionError")
    assert status["message"] == "no device plugin registered x on this node"


def test_waiting_pod_status_says_why() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    status = waiting_pod_status(pod, "claim ns/c does not exist")
    assert status["phase"] == "Pending"
    assert status["message"] == (
        "waiting for its ResourceClaims to be prepared: claim ns/c does not exist"
    )
    reasons = [c["state"]["waiting"]["reason"] for c in status["containerStatuses"]]
    assert reasons == ["ContainerCreating", "ContainerCreating"]


def test_comparable_ignores_only_transition_times() -> None:
    first = running_pod_status(_pod(_rc(process=_Alive(), started_at="t", ready=True)))
    again = {
        **first,
        "conditions": [{**c, "lastTransitionTime": "later"} for c in first["conditions"]],
    }
    assert comparable(first) == comparable(again)
    assert comparable(first) != comparable({**first, "phase": "Failed"})
    assert comparable(None) is None


def test_allocations_file_keeps_neuron_envs_devices_and_claims() -> None:
    pod = _pod(_rc(env={"NEURON_RT_VISIBLE_CORES": "0-1", "AWS_NEURON_X": "1", "PATH": "/bin"}))
    pod.devices = {CORE_RESOURCE: [core_id(0), core_id(1)]}
    pod.claims = [ClaimHandle("ns", "c1", "uid-c1", ("d",))]
    assert allocations_file([pod]) == {
        "uid-p": {
            "namespace": "ns",
            "name": "p",
            "podIP": "127.0.0.10",
            "devices": {CORE_RESOURCE: [core_id(0), core_id(1)]},
            "claims": ["ns/c1"],
            "cdi": {},
            "envs": {"NEURON_RT_VISIBLE_CORES": "0-1", "AWS_NEURON_X": "1"},
        }
    }


@pytest.mark.parametrize(
    ("capacity", "dra", "devices", "expected"),
    [
        (16, False, _cores(14, (14, 15)), (16, {"ns/p": (2, 3)}, (14, 15))),
        (16, False, _cores(2, (2, 3)), (16, {"ns/p": (2, 3)}, ())),
        (0, True, [], (16, {"ns/p": (2, 3)}, ())),
        (0, False, [], None),
    ],
    ids=[
        "unhealthy-free-cores",
        "a-held-core-is-not-listed-unhealthy",
        "dra-size-from-instance-type",
        "no-cores-no-record",
    ],
)
def test_allocation_record(
    capacity: int, dra: bool, devices: list[DeviceInfo], expected: tuple[Any, ...] | None
) -> None:
    pod = _pod(_rc(env={"NEURON_RT_VISIBLE_CORES": "2-3"}))
    text = allocation_record(
        [pod], devices, capacity_cores=capacity, instance_type="inf1.6xlarge", dra=dra
    )
    if expected is None:
        assert text is None
        return
    assert text is not None
    record = parse_record(text)
    assert (record.cores, dict(record.pods), record.unhealthy) == expected


class _Core:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("node", patch["metadata"]["annotations"][ALLOCATIONS_ANNOTATION]))

    def patch_node_status(self, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("node-status", patch["status"]["capacity"].get(CORE_RESOURCE)))

    def patch_namespaced_pod_status(self, name: str, namespace: str, patch: Any) -> None:
        self.calls.append(("pod", patch["status"]["phase"]))


def test_the_reporter_writes_only_what_changed() -> None:
    core = _Core()
    times = iter([0.0, 1.0, 2.0, 32.0])
    reporter = StatusReporter(core, SPEC, kernel="6.1", clock=lambda: next(times))  # type: ignore[arg-type]
    reporter.update_node({CORE_RESOURCE: "16"}, {CORE_RESOURCE: "16"})
    reporter.update_node({CORE_RESOURCE: "16"}, {CORE_RESOURCE: "16"})  # same, 1 s later
    reporter.update_node({CORE_RESOURCE: "15"}, {CORE_RESOURCE: "15"})  # changed
    reporter.update_node({CORE_RESOURCE: "15"}, {CORE_RESOURCE: "15"})  # same, 30 s after
    for record in ("a", "a", None, "b"):
        reporter.publish_allocations(record)
    pod = _pod(_rc(last_exit=0))
    reporter.report_pod(pod)
    reporter.report_pod(pod)
    assert core.calls == [
        ("node-status", "16"),
        ("node-status", "15"),
        ("node-status", "15"),
        ("node", "a"),
        ("node", "b"),
        ("pod", "Succeeded"),
    ]
