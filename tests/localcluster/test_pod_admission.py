"""The emulated node's pod admission: devices chosen, processes prepared, refusals named."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from neuron_cores import CORE_RESOURCE
from neuron_device_plugin.ids import HEALTHY, UNHEALTHY, core_id
from neuron_localcluster import pods
from neuron_localcluster.kubelet_emulator import AllocationResult, DeviceInfo
from neuron_localcluster.node_status import StatusReporter
from neuron_localcluster.nodes import NodeSpec
from neuron_localcluster.pod_admission import (
    KEPT_ENV,
    PodAdmitter,
    base_env,
    check_extended,
    free_devices,
    pod_dir_name,
    settle,
)
from neuron_localcluster.pod_resources_server import ContainerHolding
from neuron_localcluster.pod_supervision import RunningPod
from neuron_localcluster.podnet import PodNetwork

IDS = [core_id(i) for i in range(4)]


@pytest.mark.parametrize(
    ("devices", "taken", "count", "expected"),
    [
        ([DeviceInfo(i, HEALTHY) for i in IDS], set(), 2, IDS),
        ([DeviceInfo(i, HEALTHY) for i in IDS], {IDS[0]}, 2, IDS[1:]),
        ([DeviceInfo(IDS[0], UNHEALTHY), DeviceInfo(IDS[1], HEALTHY)], set(), 1, IDS[1:2]),
    ],
    ids=["all-free", "held-ones-left-out", "unhealthy-left-out"],
)
def test_free_devices(
    devices: list[DeviceInfo], taken: set[str], count: int, expected: list[str]
) -> None:
    assert free_devices(CORE_RESOURCE, count, devices, taken) == expected


def test_too_few_free_devices_is_an_admission_error() -> None:
    devices = [DeviceInfo(i, HEALTHY) for i in IDS]
    with pytest.raises(pods.PodSpecError, match=r"neuroncore: asked 4, 3 free"):
        free_devices(CORE_RESOURCE, 4, devices, {IDS[0]})


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        (IDS[2:4], IDS[2:4]),
        (IDS[1:2], IDS[0:2]),
        ([IDS[1], "neuroncore-9999"], IDS[0:2]),
    ],
    ids=["preference-taken", "too-few-preferred", "preferred-one-not-free"],
)
def test_settle_takes_a_valid_preference_else_the_first_free(
    preferred: list[str], expected: list[str]
) -> None:
    assert settle(preferred, IDS, 2) == expected


EXTENDED = {
    "resourceClaimName": "p-ext",
    "requestMappings": [{"containerName": "c", "resourceName": CORE_RESOURCE}],
}


@pytest.mark.parametrize(
    ("resources", "status", "refused"),
    [
        ({}, {}, False),
        ({"limits": {CORE_RESOURCE: "2"}}, {"extendedResourceClaimStatus": EXTENDED}, False),
        ({"limits": {CORE_RESOURCE: "2"}}, {}, True),
    ],
    ids=["asks-nothing", "with-the-schedulers-claim", "bound-without-the-scheduler"],
)
def test_check_extended(resources: dict[str, Any], status: dict[str, Any], refused: bool) -> None:
    pod = {"status": status}
    container = {"name": "c", "resources": resources}
    if refused:
        with pytest.raises(pods.PodSpecError, match="n1 offers only through DRA"):
            check_extended(pod, container, "n1")
    else:
        check_extended(pod, container, "n1")


def test_base_env_keeps_only_the_listed_variables(tmp_path: Path) -> None:
    environ = {"PATH": "/bin", "LANG": "C", "SECRET": "x", "KUBECONFIG": "/k"}
    env = base_env(
        environ, pod_dir=tmp_path, instance_type="inf1.xlarge", sim_state_dir=tmp_path / "sim"
    )
    assert env == {
        "PATH": "/bin",
        "LANG": "C",
        "HOME": str(tmp_path),
        "NEURON_SIM_INSTANCE_TYPE": "inf1.xlarge",
        "NEURON_SIM_STATE_DIR": str(tmp_path / "sim"),
        "PYTHONSAFEPATH": "1",
        "PYTHONUNBUFFERED": "1",
    }
    assert set(KEPT_ENV) >= {"PATH", "LANG"}


def test_pod_dir_name() -> None:
    meta = {"namespace": "ns", "name": "p", "uid": "0123456789abcdef"}
    assert pod_dir_name(meta) == "ns_p_01234567"


@dataclass
class _Plugin:
    """A registered plugin as the agent sees it: a device list, a preference, Allocate."""

    devices_listed: list[DeviceInfo]
    allocated: list[list[str]] = field(default_factory=list)

    def devices(self) -> list[DeviceInfo]:
        return list(self.devices_listed)

    def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str] = (), size: int = 1
    ) -> list[str]:
        return list(available[-size:])  # the last free ones: not what "first free" would pick

    def allocate(self, ids: Sequence[str]) -> AllocationResult:
        self.allocated.append(list(ids))
        cores = ",".join(str(int(i.rpartition("-")[2])) for i in ids)
        return AllocationResult(envs={"NEURON_RT_VISIBLE_CORES": cores}, devices=[])


class _Emulator:
    def __init__(self, plugin: _Plugin) -> None:
        self.plugin = plugin

    def client(self, resource: str) -> _Plugin | None:
        return self.plugin if resource == CORE_RESOURCE else None


def _admitter(tmp_path: Path, plugin: _Plugin) -> tuple[PodAdmitter, dict[str, RunningPod]]:
    running: dict[str, RunningPod] = {}
    admitter = PodAdmitter(
        spec=NodeSpec("n1", "inf1.6xlarge", emulated=True),
        workdir=tmp_path,
        bin_dirs=(Path(sys.executable).parent,),
        net=PodNetwork(tmp_path),
        emulator=_Emulator(plugin),  # type: ignore[arg-type]
        dra=None,
        reporter=StatusReporter(None, NodeSpec("n1", "inf1.6xlarge"), kernel="k"),  # type: ignore[arg-type]
        running=running,
        environ={"PATH": "/usr/bin:/bin"},
    )
    return admitter, running


def _container(name: str, cores: int) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["sh", "-c"],
        "args": ["serve --cores $(NEURON_RT_VISIBLE_CORES) --name $(NAME)"],
        "env": [{"name": "NAME", "value": name}],
        "resources": {"limits": {CORE_RESOURCE: str(cores)}},
    }


def test_containers_of_one_pod_get_disjoint_devices_and_expanded_commands(
    tmp_path: Path,
) -> None:
    plugin = _Plugin([DeviceInfo(i, HEALTHY) for i in IDS])
    admitter, running = _admitter(tmp_path, plugin)
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"hostNetwork": True, "containers": [_container("a", 2), _container("b", 2)]},
    }
    admitted = admitter.admit(pod)
    assert admitted is not None and admitted.failed is None
    assert running == {"u1": admitted}
    assert plugin.allocated == [IDS[2:4], IDS[0:2]]
    assert admitted.holdings == [
        ContainerHolding("ns", "p", "a", CORE_RESOURCE, tuple(IDS[2:4])),
        ContainerHolding("ns", "p", "b", CORE_RESOURCE, tuple(IDS[0:2])),
    ]
    argvs = [rc.argv[1:] for rc in admitted.containers]
    assert argvs == [
        ["-c", "serve --cores 2,3 --name a"],
        ["-c", "serve --cores 0,1 --name b"],
    ]
    assert [rc.env["NEURON_RT_VISIBLE_CORES"] for rc in admitted.containers] == ["2,3", "0,1"]
    assert admitted.pod_ip == "127.0.0.1"


def test_a_pod_asking_more_than_is_free_is_admitted_failed(tmp_path: Path) -> None:
    plugin = _Plugin([DeviceInfo(i, HEALTHY) for i in IDS])
    admitter, _ = _admitter(tmp_path, plugin)
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"hostNetwork": True, "containers": [_container("a", 8)]},
    }
    admitted = admitter.admit(pod)
    assert admitted is not None
    assert admitted.failed == f"UnexpectedAdmissionError: {CORE_RESOURCE}: asked 8, 4 free"
    assert plugin.allocated == []
