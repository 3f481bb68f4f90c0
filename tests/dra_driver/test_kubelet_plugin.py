"""The kubelet side over real gRPC on unix sockets: prepare, unprepare, checkpoint, registration."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from neuron_device_plugin.topology import contiguous_topology
from neuron_dra_driver.api import dra_pb2 as dra
from neuron_dra_driver.api import pluginregistration_pb2 as reg
from neuron_dra_driver.api.services import DRAPluginStub, RegistrationStub
from neuron_dra_driver.kubeletplugin import DRAKubeletPlugin, KubeletPluginServer
from neuron_dra_driver.layout import DRIVER_NAME, NodeShape
from neuron_dra_driver.prepare import (
    CDI_KIND,
    Checkpoint,
    CheckpointError,
    cdi_spec_path,
    parse_block,
)

NODE = "node-a"
SHAPE = NodeShape("inf1.6xlarge", 4, 4)


def _claim(
    uid: str, devices: list[tuple[str, str]], *, pool: str = NODE, driver: str = DRIVER_NAME
) -> dict[str, Any]:
    """A ResourceClaim as the API server returns it: (request, device) results."""
    results = [
        {"request": request, "driver": driver, "pool": pool, "device": device}
        for request, device in devices
    ]
    return {
        "metadata": {"name": f"claim-{uid}", "namespace": "ns", "uid": uid},
        "status": {"allocation": {"devices": {"results": results}}} if results else {},
    }


class FakeReader:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0

    def add(self, claim: dict[str, Any]) -> None:
        meta = claim["metadata"]
        self.claims[(meta["namespace"], meta["name"])] = claim

    def read_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.claims.get((namespace, name))


class Node:
    """A plugin with its servers, folders and a kubelet-side client."""

    def __init__(self, root: Path, reader: FakeReader) -> None:
        self.root = root
        self.reader = reader
        self.cdi_dir = root / "cdi"
        self.checkpoint_path = root / "plugin" / "checkpoint.json"
        self.plugin = DRAKubeletPlugin(
            node=NODE,
            shape=SHAPE,
            topology=contiguous_topology(4, 4),
            reader=reader,
            cdi_dir=self.cdi_dir,
            checkpoint=Checkpoint(self.checkpoint_path),
        )
        self.server = KubeletPluginServer(self.plugin, root / "plugin", root / "registry")
        self.server.start()
        self.channel = grpc.insecure_channel(f"unix://{self.server.plugin_socket}")
        self.stub = DRAPluginStub(self.channel)

    def prepare(self, *uids: str) -> dra.NodePrepareResourcesResponse:
        claims = [dra.Claim(namespace="ns", name=f"claim-{u}", uid=u) for u in uids]
        return self.stub.node_prepare_resources(
            dra.NodePrepareResourcesRequest(claims=claims), timeout=10
        )

    def unprepare(self, *uids: str) -> dra.NodeUnprepareResourcesResponse:
        claims = [dra.Claim(namespace="ns", name=f"claim-{u}", uid=u) for u in uids]
        return self.stub.node_unprepare_resources(
            dra.NodeUnprepareResourcesRequest(claims=claims), timeout=10
        )

    def spec(self, uid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(cdi_spec_path(self.cdi_dir, uid).read_text())
        return data

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reader() -> FakeReader:
    return FakeReader()


@pytest.fixture
def node(root: Path, reader: FakeReader) -> Iterator[Node]:
    made = Node(root, reader)
    yield made
    made.close()


def test_prepare_writes_a_cdi_spec_with_the_range_and_the_device_nodes(
    node: Node, reader: FakeReader
) -> None:
    reader.add(_claim("u1", [("cores", "cores-2-7")]))
    response = node.prepare("u1")
    answer = response.claims["u1"]
    assert answer.error == ""
    (device,) = answer.devices
    assert (list(device.request_names), device.pool_name, device.device_name) == (
        ["cores"],
        NODE,
        "cores-2-7",
    )
    assert list(device.cdi_device_ids) == [f"{CDI_KIND}=u1-cores"]
    spec = node.spec("u1")
    assert spec["kind"] == CDI_KIND and spec["cdiVersion"] == "0.6.0"
    (cdi,) = spec["devices"]
    assert cdi["name"] == "u1-cores"
    assert cdi["containerEdits"]["env"] == ["NEURON_RT_VISIBLE_CORES=2-7"]
    assert cdi["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/neuron0"},
        {"path": "/dev/neuron1"},
    ]


def test_two_single_core_blocks_of_one_request_make_one_cdi_device(
    node: Node, reader: FakeReader
) -> None:
    reader.add(_claim("u2", [("neuroncore", "core-15"), ("neuroncore", "core-14")]))
    answer = node.prepare("u2").claims["u2"]
    assert [d.device_name for d in answer.devices] == ["core-15", "core-14"]
    assert [len(d.cdi_device_ids) for d in answer.devices] == [1, 0]
    (cdi,) = node.spec("u2")["devices"]
    assert cdi["containerEdits"]["env"] == ["NEURON_RT_VISIBLE_CORES=14-15"]
    assert cdi["containerEdits"]["deviceNodes"] == [{"path": "/dev/neuron3"}]


def test_prepare_is_idempotent_and_survives_a_restart(root: Path, reader: FakeReader) -> None:
    first = Node(root, reader)
    try:
        reader.add(_claim("u3", [("cores", "cores-0-3")]))
        answer = first.prepare("u3").claims["u3"]
        again = first.prepare("u3").claims["u3"]
        assert again == answer and reader.reads == 1  # the second answer is the checkpoint's
    finally:
        first.close()
    reader.claims.clear()  # the restarted plugin must not need the API server for it
    cdi_spec_path(root / "cdi", "u3").unlink()  # nor the CDI file (a tmpfs after a reboot)
    restarted = Node(root, reader)
    try:
        assert restarted.prepare("u3").claims["u3"] == answer
        assert restarted.spec("u3")["devices"][0]["containerEdits"]["env"] == [
            "NEURON_RT_VISIBLE_CORES=0-3"
        ]
        assert restarted.unprepare("u3").claims["u3"].error == ""
        assert not cdi_spec_path(root / "cdi", "u3").exists()
        assert json.loads((root / "plugin" / "checkpoint.json").read_text())["claims"] == {}
        assert restarted.unprepare("u3").claims["u3"].error == ""  # repeated: still fine
    finally:
        restarted.close()


REFUSALS = {
    "unknown-claim": (None, "does not exist on the API server"),
    "recreated-claim": ({**_claim("other-uid", [("cores", "core-0")])}, "has uid 'other-uid'"),
    "not-allocated": (_claim("u9", []), "is not allocated"),
    "another-driver": (
        _claim("u9", [("gpu", "gpu-0")], driver="gpu.example.com"),
        f"has no device of driver {DRIVER_NAME} (its devices are from: gpu.example.com)",
    ),
    "another-node": (_claim("u9", [("cores", "core-0")], pool="node-b"), "not this node's pool"),
    "unknown-device": (
        _claim("u9", [("cores", "cores-12-19")]),
        "is not a block this node publishes",
    ),
    "odd-device-name": (_claim("u9", [("cores", "cores-03-4")]), "is not a block"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS), ids=sorted(REFUSALS))
def test_a_refused_claim_gets_the_reason_and_nothing_is_prepared(
    node: Node, reader: FakeReader, case: str
) -> None:
    claim, message = REFUSALS[case]
    if claim is not None:
        claim = json.loads(json.dumps(claim))
        claim["metadata"]["name"] = "claim-u9"
        reader.add(claim)
    reader.add(_claim("ok", [("cores", "core-5")]))
    response = node.prepare("u9", "ok")
    assert message in response.claims["u9"].error
    assert not response.claims["u9"].devices
    assert not cdi_spec_path(node.cdi_dir, "u9").exists()
    assert node.plugin.checkpoint.get("u9") is None
    assert response.claims["ok"].error == ""  # the other claim of the call is prepared
    assert cdi_spec_path(node.cdi_dir, "ok").exists()


def test_cores_already_prepared_for_another_claim_are_refused(
    node: Node, reader: FakeReader
) -> None:
    reader.add(_claim("a", [("cores", "cores-0-5")]))
    reader.add(_claim("b", [("cores", "cores-4-7")]))
    assert node.prepare("a").claims["a"].error == ""
    error = node.prepare("b").claims["b"].error
    assert "cores [4, 5] are prepared for claim ns/claim-a (uid a)" in error
    assert not cdi_spec_path(node.cdi_dir, "b").exists()


def test_a_corrupt_checkpoint_is_refused_with_the_file_named(root: Path) -> None:
    path = root / "checkpoint.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is not a valid checkpoint"):
        Checkpoint(path)
    path.write_text(json.dumps({"version": 99, "claims": {}}))
    with pytest.raises(CheckpointError, match="version 99, expected 1"):
        Checkpoint(path)


def test_registration_names_the_driver_its_socket_and_service(node: Node) -> None:
    with grpc.insecure_channel(f"unix://{node.server.registry_socket}") as channel:
        stub = RegistrationStub(channel)
        info = stub.get_info(reg.InfoRequest(), timeout=10)
        assert (info.type, info.name, info.endpoint) == (
            "DRAPlugin",
            DRIVER_NAME,
            str(node.server.plugin_socket),
        )
        assert list(info.supported_versions) == ["v1.DRAPlugin"]
        stub.notify_registration_status(
            reg.RegistrationStatus(plugin_registered=False, error="version mismatch"), timeout=10
        )
    assert node.server.registration.notified.is_set()
    status = node.server.registration.status
    assert status is not None and status.error == "version mismatch"


def test_stop_removes_both_sockets(root: Path, reader: FakeReader) -> None:
    made = Node(root, reader)
    sockets = [made.server.plugin_socket, made.server.registry_socket]
    assert all(s.exists() for s in sockets)
    made.close()
    assert not any(s.exists() for s in sockets)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("core-3", (3, 1)), ("cores-4-7", (4, 4)), ("cores-0-15", (0, 16)), ("cores-7-4", None),
     ("cores-0-16", None), ("core--1", None), ("cores-04-7", None), ("block-1", None)],
    ids=["one", "four", "all", "reversed", "outside", "negative", "leading-zero", "other"],
)  # fmt: skip
def test_parse_block(name: str, expected: tuple[int, int] | None) -> None:
    block = parse_block(name, SHAPE)
    assert (None if block is None else (block.first, block.size)) == expected
