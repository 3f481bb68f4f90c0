"""The committed generated code is fresh, and the proto matches the wire facts exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from neuron_device_plugin.api import deviceplugin_pb2 as pb
from neuron_device_plugin.api import podresources_pb2 as pr
from neuron_device_plugin.api.generate import API_DIR, GENERATED_NAMES, generate_into
from neuron_device_plugin.podresources import LIST_METHOD, POD_RESOURCES_SERVICE


@pytest.mark.parametrize("name", GENERATED_NAMES, ids=GENERATED_NAMES)
def test_generated_code_is_not_stale(name: str, tmp_path: Path) -> None:
    fresh = generate_into(tmp_path)[name].read_text()
    committed = (API_DIR / name).read_text()
    assert committed == fresh, (
        f"{name} is stale: run `python -m neuron_device_plugin.api.generate` and commit the result"
    )


# (message, field, number, type, repeated) from the Device Plugin API v1beta1.
_S, _B, _I32, _I64, _M = (
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_MESSAGE,
)
WIRE_FIELDS = [
    ("DevicePluginOptions", "pre_start_required", 1, _B, False),
    ("DevicePluginOptions", "get_preferred_allocation_available", 2, _B, False),
    ("RegisterRequest", "version", 1, _S, False),
    ("RegisterRequest", "endpoint", 2, _S, False),
    ("RegisterRequest", "resource_name", 3, _S, False),
    ("RegisterRequest", "options", 4, _M, False),
    ("ListAndWatchResponse", "devices", 1, _M, True),
    ("TopologyInfo", "nodes", 1, _M, True),
    ("NUMANode", "ID", 1, _I64, False),
    ("Device", "ID", 1, _S, False),
    ("Device", "health", 2, _S, False),
    ("Device", "topology", 3, _M, False),
    ("PreStartContainerRequest", "devices_ids", 1, _S, True),
    ("PreferredAllocationRequest", "container_requests", 1, _M, True),
    ("ContainerPreferredAllocationRequest", "available_deviceIDs", 1, _S, True),
    ("ContainerPreferredAllocationRequest", "must_include_deviceIDs", 2, _S, True),
    ("ContainerPreferredAllocationRequest", "allocation_size", 3, _I32, False),
    ("PreferredAllocationResponse", "container_responses", 1, _M, True),
    ("ContainerPreferredAllocationResponse", "deviceIDs", 1, _S, True),
    ("AllocateRequest", "container_requests", 1, _M, True),
    ("ContainerAllocateRequest", "devices_ids", 1, _S, True),
    ("AllocateResponse", "container_responses", 1, _M, True),
    ("ContainerAllocateResponse", "envs", 1, _M, True),
    ("ContainerAllocateResponse", "mounts", 2, _M, True),
    ("ContainerAllocateResponse", "devices", 3, _M, True),
    ("ContainerAllocateResponse", "annotations", 4, _M, True),
    ("ContainerAllocateResponse", "cdi_devices", 5, _M, True),
    ("Mount", "container_path", 1, _S, False),
    ("Mount", "host_path", 2, _S, False),
    ("Mount", "read_only", 3, _B, False),
    ("DeviceSpec", "container_path", 1, _S, False),
    ("DeviceSpec", "host_path", 2, _S, False),
    ("DeviceSpec", "permissions", 3, _S, False),
    ("CDIDevice", "name", 1, _S, False),
]


@pytest.mark.parametrize(
    ("message", "field", "number", "kind", "repeated"),
    WIRE_FIELDS,
    ids=[f"{m}.{f}" for m, f, *_ in WIRE_FIELDS],
)
def test_field_numbers_match_the_api(
    message: str, field: str, number: int, kind: int, repeated: bool
) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert descriptor.number == number
    assert descriptor.type == kind
    assert descriptor.is_repeated == repeated


def test_every_message_is_checked() -> None:
    checked = {m for m, *_ in WIRE_FIELDS} | {"Empty", "PreStartContainerResponse"}
    assert set(pb.DESCRIPTOR.message_types_by_name) == checked
    for name in ("Empty", "PreStartContainerResponse"):
        assert not pb.DESCRIPTOR.message_types_by_name[name].fields


SERVICES = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": (
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            False,
        ),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}


@pytest.mark.parametrize("service", sorted(SERVICES), ids=sorted(SERVICES))
def test_services_and_methods(service: str) -> None:
    assert pb.DESCRIPTOR.package == "v1beta1"
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"v1beta1.{service}"
    methods = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming)
        for m in descriptor.methods
    }
    assert methods == SERVICES[service]


# (message, field, number, type, repeated) of the kubelet's PodResources API v1 that we declare.
POD_RESOURCES_FIELDS = [
    ("ListPodResourcesResponse", "pod_resources", 1, _M, True),
    ("PodResources", "name", 1, _S, False),
    ("PodResources", "namespace", 2, _S, False),
    ("PodResources", "containers", 3, _M, True),
    ("ContainerResources", "name", 1, _S, False),
    ("ContainerResources", "devices", 2, _M, True),
    ("ContainerDevices", "resource_name", 1, _S, False),
    ("ContainerDevices", "device_ids", 2, _S, True),
]


@pytest.mark.parametrize(
    ("message", "field", "number", "kind", "repeated"),
    POD_RESOURCES_FIELDS,
    ids=[f"{m}.{f}" for m, f, *_ in POD_RESOURCES_FIELDS],
)
def test_pod_resources_fields_match_the_api(
    message: str, field: str, number: int, kind: int, repeated: bool
) -> None:
    descriptor = pr.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert descriptor.number == number
    assert descriptor.type == kind
    assert descriptor.is_repeated == repeated


def test_pod_resources_service_and_every_field_checked() -> None:
    assert pr.DESCRIPTOR.package == "v1"
    service = pr.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == POD_RESOURCES_SERVICE
    assert f"/{service.full_name}/List" == LIST_METHOD
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {"List": ("ListPodResourcesRequest", "ListPodResourcesResponse")}
    declared = {
        (m.name, f.name) for m in pr.DESCRIPTOR.message_types_by_name.values() for f in m.fields
    }
    assert declared == {(m, f) for m, f, *_ in POD_RESOURCES_FIELDS}
