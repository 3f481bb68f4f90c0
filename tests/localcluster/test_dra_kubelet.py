"""The emulated node's DRA kubelet side: claims of a pod, CDI edits, registration, prepare."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from neuron_device_plugin.topology import contiguous_topology
from neuron_dra_driver.api import pluginregistration_pb2 as reg
from neuron_dra_driver.kubeletplugin import DRAKubeletPlugin, KubeletPluginServer
from neuron_dra_driver.layout import DRIVER_NAME, NodeShape
from neuron_dra_driver.prepare import Checkpoint, cdi_spec_path
from neuron_localcluster.dra_kubelet import (
    EXTENDED_CLAIM,
    ClaimsNotReadyError,
    DRAKubelet,
    PluginWatcher,
    PodClaim,
    PreparedDevice,
    apply_cdi,
    claim_drivers,
    container_devices,
    index_cdi_specs,
    pod_claims,
    refusal,
)

NODE = "emulated-inf1-6xlarge-1"
POD_UID = "pod-uid-1"


def _pod(
    claims: list[dict[str, Any]],
    statuses: list[dict[str, Any]] | None = None,
    extended: dict[str, Any] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if statuses is not None:
        status["resourceClaimStatuses"] = statuses
    if extended is not None:
        status["extendedResourceClaimStatus"] = extended
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": POD_UID},
        "spec": {"resourceClaims": claims, "containers": containers or []},
        "status": status,
    }


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod([{"name": "cores", "resourceClaimName": "six"}]), [PodClaim("cores", "six")]),
        (
            _pod(
                [{"name": "cores", "resourceClaimTemplateName": "t"}],
                [{"name": "cores", "resourceClaimName": "p-cores-x7k"}],
            ),
            [PodClaim("cores", "p-cores-x7k")],
        ),
        (
            _pod(
                [],
                extended={
                    "resourceClaimName": "p-extended-resources-abc",
                    "requestMappings": [
                        {
                            "containerName": "main",
                            "resourceName": "aws.amazon.com/neuroncore",
                            "requestName": "container-0-request-0",
                        }
                    ],
                },
            ),
            [
                PodClaim(
                    EXTENDED_CLAIM,
                    "p-extended-resources-abc",
                    (("main", "container-0-request-0"),),
                )
            ],
        ),
        (_pod([]), []),
    ],
    ids=["by-name", "from-template", "extended-resource", "none"],
)
def test_pod_claims(pod: dict[str, Any], expected: list[PodClaim]) -> None:
    assert pod_claims(pod) == expected


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        (
            _pod([{"name": "cores", "resourceClaimTemplateName": "t"}]),
            "from template 't' is not recorded",
        ),
        (_pod([{"name": "cores"}]), "names neither resourceClaimName"),
    ],
    ids=["template-not-made-yet", "no-source"],
)
def test_pod_claims_not_ready(pod: dict[str, Any], message: str) -> None:
    with pytest.raises(ClaimsNotReadyError, match=message):
        pod_claims(pod)


def _claim(
    uid: str,
    devices: list[tuple[str, str]],
    *,
    reserved: tuple[str, ...] = (POD_UID,),
    allocated: bool = True,
    name: str = "six",
) -> dict[str, Any]:
    results = [{"request": r, "driver": DRIVER_NAME, "pool": NODE, "device": d} for r, d in devices]
    status: dict[str, Any] = {"reservedFor": [{"resource": "pods", "uid": u} for u in reserved]}
    if allocated:
        status["allocation"] = {"devices": {"results": results}}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid}, "status": status}


@pytest.mark.parametrize(
    ("claim", "outcome"),
    [
        (_claim("c1", [("cores", "cores-0-5")]), [DRIVER_NAME]),
        (_claim("c1", [], allocated=False), "is not allocated yet"),
        (_claim("c1", [("cores", "cores-0-5")], reserved=("other",)), "is not reserved for pod"),
    ],
    ids=["allocated-and-reserved", "unallocated", "reserved-for-another-pod"],
)
def test_claim_drivers(claim: dict[str, Any], outcome: list[str] | str) -> None:
    if isinstance(outcome, list):
        assert claim_drivers(claim, POD_UID) == outcome
    else:
        with pytest.raises(ClaimsNotReadyError, match=outcome):
            claim_drivers(claim, POD_UID)


A = PreparedDevice(("a",), NODE, "cores-0-3", ("k=a",))
B = PreparedDevice(("b",), NODE, "cores-4-5", ("k=b",))
X = PreparedDevice(("container-0-request-0",), NODE, "core-15", ("k=x",))


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"name": "main", "resources": {"claims": [{"name": "cores"}]}}, [A, B]),
        ({"name": "main", "resources": {"claims": [{"name": "cores", "request": "b"}]}}, [B]),
        ({"name": "side"}, []),
        ({"name": "ext"}, [X]),
    ],
    ids=["whole-claim", "one-request", "names-no-claim", "extended-mapping"],
)
def test_container_devices(container: dict[str, Any], expected: list[PreparedDevice]) -> None:
    claims = [
        PodClaim("cores", "six"),
        PodClaim(EXTENDED_CLAIM, "p-ext", (("ext", "container-0-request-0"),)),
    ]
    prepared = {"six": [A, B], "p-ext": [X]}
    assert container_devices(container, claims, prepared) == expected


SPECS = [
    {
        "kind": "neurongroups.dev/neuroncores",
        "containerEdits": {"env": ["COMMON=1"]},
        "devices": [
            {
                "name": "u1-cores",
                "containerEdits": {
                    "env": ["NEURON_RT_VISIBLE_CORES=2-7"],
                    "deviceNodes": [{"path": "/dev/neuron0"}, {"path": "/dev/neuron1"}],
                },
            },
            {"name": "bad", "containerEdits": {"env": ["NOEQUALS"]}},
        ],
    }
]


def test_apply_cdi_sets_env_and_records_device_nodes() -> None:
    edits = apply_cdi(["neurongroups.dev/neuroncores=u1-cores"], index_cdi_specs(SPECS))
    assert edits.env == {"COMMON": "1", "NEURON_RT_VISIBLE_CORES": "2-7"}
    assert edits.device_nodes == ["/dev/neuron0", "/dev/neuron1"]
    assert edits.cdi_ids == ["neurongroups.dev/neuroncores=u1-cores"]


@pytest.mark.parametrize(
    ("cdi_id", "message"),
    [
        ("neurongroups.dev/neuroncores=missing", "is in no CDI spec"),
        ("neurongroups.dev/neuroncores=bad", "is not K=V"),
    ],
    ids=["unknown-device", "bad-env"],
)
def test_apply_cdi_refuses(cdi_id: str, message: str) -> None:
    with pytest.raises(ClaimsNotReadyError, match=message):
        apply_cdi([cdi_id], index_cdi_specs(SPECS))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (reg.PluginInfo(type="DRAPlugin", name="d", supported_versions=["v1.DRAPlugin"]), None),
        (reg.PluginInfo(type="DevicePlugin", name="d"), "not handled here"),
        (
            reg.PluginInfo(type="DRAPlugin", name="d", supported_versions=["v1alpha4.DRAPlugin"]),
            "none of the versions",
        ),
        (reg.PluginInfo(type="DRAPlugin", supported_versions=["v1.DRAPlugin"]), "no driver name"),
    ],
    ids=["dra-v1", "other-type", "old-version", "no-name"],
)
def test_refusal(info: reg.PluginInfo, message: str | None) -> None:
    why = refusal(info)
    if message is None:
        assert why is None
    else:
        assert why is not None and message in why


# ---- against the driver's real kubelet side over unix sockets ------------------------------


class Claims:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def read_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.items.get((namespace, name))


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="drak-", dir="/tmp"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _driver(root: Path, claims: Claims) -> KubeletPluginServer:
    plugin = DRAKubeletPlugin(
        node=NODE,
        shape=NodeShape("inf1.6xlarge", 4, 4),
        topology=contiguous_topology(4, 4),
        reader=claims,
        cdi_dir=root / "cdi",
        checkpoint=Checkpoint(root / "plugin" / "checkpoint.json"),
    )
    return KubeletPluginServer(plugin, root / "plugin", root / "registry")


def test_register_prepare_apply_unprepare_deregister(root: Path) -> None:
    claims = Claims()
    claims.items[("ns", "p-cores-x7k")] = _claim(
        "claim-uid-1", [("cores", "cores-2-7")], name="p-cores-x7k"
    )
    server = _driver(root, claims)
    server.start()
    watcher = PluginWatcher(root / "registry")
    try:
        watcher.scan()
        assert set(watcher.drivers) == {DRIVER_NAME}
        assert server.registration.notified.wait(5)
        assert server.registration.status is not None
        assert server.registration.status.plugin_registered
        kubelet = DRAKubelet(watcher, root / "cdi", claims.read_claim)
        pod = _pod(
            [{"name": "cores", "resourceClaimTemplateName": "six"}],
            [{"name": "cores", "resourceClaimName": "p-cores-x7k"}],
            containers=[
                {"name": "main", "resources": {"claims": [{"name": "cores"}]}},
                {"name": "sidecar"},
            ],
        )
        got = kubelet.prepare_pod(pod)
        assert got.devices == ["cores-2-7"]
        assert got.per_container["main"].env == {"NEURON_RT_VISIBLE_CORES": "2-7"}
        assert got.per_container["main"].device_nodes == ["/dev/neuron0", "/dev/neuron1"]
        assert got.per_container["sidecar"].env == {}
        assert cdi_spec_path(root / "cdi", "claim-uid-1").exists()
        (handle,) = got.claims
        assert kubelet.unprepare(handle)
        assert not cdi_spec_path(root / "cdi", "claim-uid-1").exists()
    finally:
        server.stop()
    watcher.scan()
    assert watcher.drivers == {}
    with pytest.raises(ClaimsNotReadyError, match="is not registered on this node"):
        DRAKubelet(watcher, root / "cdi", claims.read_claim).prepare_pod(pod)


def test_prepare_refused_by_the_driver_keeps_the_pod_waiting(root: Path) -> None:
    claims = Claims()
    # a 17-core block: no block of a 16-core node
    claims.items[("ns", "big")] = _claim("claim-uid-2", [("cores", "cores-0-16")], name="big")
    server = _driver(root, claims)
    server.start()
    watcher = PluginWatcher(root / "registry")
    try:
        watcher.scan()
        kubelet = DRAKubelet(watcher, root / "cdi", claims.read_claim)
        pod = _pod([{"name": "cores", "resourceClaimName": "big"}])
        with pytest.raises(ClaimsNotReadyError, match=r"refused claim ns/big: .*not a block"):
            kubelet.prepare_pod(pod)
    finally:
        server.stop()
        watcher.close()


def test_a_claim_not_ready_reports_the_claims_prepared_before_it(root: Path) -> None:
    claims = Claims()
    claims.items[("ns", "ready")] = _claim("claim-uid-3", [("cores", "cores-0-3")], name="ready")
    claims.items[("ns", "later")] = _claim("claim-uid-4", [], allocated=False, name="later")
    server = _driver(root, claims)
    server.start()
    watcher = PluginWatcher(root / "registry")
    try:
        watcher.scan()
        kubelet = DRAKubelet(watcher, root / "cdi", claims.read_claim)
        pod = _pod(
            [
                {"name": "a", "resourceClaimName": "ready"},
                {"name": "b", "resourceClaimName": "later"},
            ]
        )
        with pytest.raises(ClaimsNotReadyError, match="ns/later is not allocated yet") as caught:
            kubelet.prepare_pod(pod)
        (handle,) = caught.value.prepared
        assert (handle.name, handle.uid) == ("ready", "claim-uid-3")
        assert cdi_spec_path(root / "cdi", "claim-uid-3").exists()
        assert kubelet.unprepare(handle)  # what the agent does when the pod goes unstarted
        assert not cdi_spec_path(root / "cdi", "claim-uid-3").exists()
    finally:
        server.stop()
        watcher.close()


def test_a_driver_restarted_between_two_scans_is_registered_again(root: Path) -> None:
    claims = Claims()
    first = _driver(root, claims)
    first.start()
    watcher = PluginWatcher(root / "registry")
    try:
        watcher.scan()
        assert first.registration.notified.wait(5)
        first.stop()
        second = _driver(root, claims)  # same socket paths, new sockets
        second.start()
        try:
            watcher.scan()
            assert second.registration.notified.wait(5)
            assert set(watcher.drivers) == {DRIVER_NAME}
        finally:
            second.stop()
    finally:
        first.stop()
        watcher.close()


def test_a_driver_gone_past_the_wiping_delay_has_its_slices_wiped_once(root: Path) -> None:
    """As the kubelet: a driver that deregistered and did not come back within the delay has its
    ResourceSlices for the node deleted; one that comes back in time keeps them."""
    now = [0.0]
    wiped: list[str] = []
    watcher = PluginWatcher(
        root / "registry", wipe=wiped.append, wiping_delay_s=30.0, clock=lambda: now[0]
    )
    server = _driver(root, Claims())
    server.start()
    watcher.scan()
    assert set(watcher.drivers) == {DRIVER_NAME}
    server.stop()
    watcher.scan()
    now[0] = 29.0
    watcher.scan()
    assert wiped == []
    restarted = _driver(root, Claims())
    restarted.start()
    try:
        watcher.scan()  # back within the delay: nothing is wiped, now or later
        now[0] = 100.0
        watcher.scan()
        assert wiped == []
    finally:
        restarted.stop()
    watcher.scan()
    now[0] = 129.0
    watcher.scan()
    assert wiped == []
    now[0] = 131.0
    watcher.scan()
    watcher.scan()
    assert wiped == [DRIVER_NAME]
    watcher.close()
