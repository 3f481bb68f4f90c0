"""The committed generated code is fresh, and both protos match the kubelet's wire facts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor

from neuron_dra_driver.api import dra_pb2, pluginregistration_pb2
from neuron_dra_driver.api.generate import API_DIR, GENERATED_NAMES, generate_into
from neuron_dra_driver.api.services import DRA_SERVICE, REGISTRATION_SERVICE


@pytest.mark.parametrize("name", GENERATED_NAMES, ids=GENERATED_NAMES)
def test_generated_code_is_not_stale(name: str, tmp_path: Path) -> None:
    fresh = generate_into(tmp_path)[name].read_text()
    committed = (API_DIR / name).read_text()
    assert committed == fresh, (
        f"{name} is stale: run `python -m neuron_dra_driver.api.generate` and commit the result"
    )


_S, _B, _M = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_MESSAGE
# (module, message, field, number, type, repeated), from k8s.io/kubelet v0.36.1.
WIRE_FIELDS: list[tuple[ModuleType, str, str, int, int, bool]] = [
    (dra_pb2, "Claim", "namespace", 1, _S, False),
    (dra_pb2, "Claim", "uid", 2, _S, False),
    (dra_pb2, "Claim", "name", 3, _S, False),
    (dra_pb2, "NodePrepareResourcesRequest", "claims", 1, _M, True),
    (dra_pb2, "NodePrepareResourcesResponse", "claims", 1, _M, True),
    (dra_pb2, "NodePrepareResourceResponse", "devices", 1, _M, True),
    (dra_pb2, "NodePrepareResourceResponse", "error", 2, _S, False),
    (dra_pb2, "Device", "request_names", 1, _S, True),
    (dra_pb2, "Device", "pool_name", 2, _S, False),
    (dra_pb2, "Device", "device_name", 3, _S, False),
    (dra_pb2, "Device", "cdi_device_ids", 4, _S, True),
    (dra_pb2, "Device", "share_id", 5, _S, False),
    (dra_pb2, "NodeUnprepareResourcesRequest", "claims", 1, _M, True),
    (dra_pb2, "NodeUnprepareResourcesResponse", "claims", 1, _M, True),
    (dra_pb2, "NodeUnprepareResourceResponse", "error", 1, _S, False),
    (pluginregistration_pb2, "PluginInfo", "type", 1, _S, False),
    (pluginregistration_pb2, "PluginInfo", "name", 2, _S, False),
    (pluginregistration_pb2, "PluginInfo", "endpoint", 3, _S, False),
    (pluginregistration_pb2, "PluginInfo", "supported_versions", 4, _S, True),
    (pluginregistration_pb2, "RegistrationStatus", "plugin_registered", 1, _B, False),
    (pluginregistration_pb2, "RegistrationStatus", "error", 2, _S, False),
]
EMPTY = {
    (pluginregistration_pb2, "InfoRequest"),
    (pluginregistration_pb2, "RegistrationStatusResponse"),
}


@pytest.mark.parametrize(
    ("module", "message", "field", "wire"),
    [(mod, m, f, tuple(rest)) for mod, m, f, *rest in WIRE_FIELDS],
    ids=[f"{m}.{f}" for _, m, f, *_ in WIRE_FIELDS],
)
def test_field_numbers_match_the_api(
    module: ModuleType, message: str, field: str, wire: tuple[int, int, bool]
) -> None:
    descriptor = module.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert (descriptor.number, descriptor.type, descriptor.is_repeated) == wire


def test_every_message_and_field_is_checked() -> None:
    for module in (dra_pb2, pluginregistration_pb2):
        checked = {(m, f) for mod, m, f, *_ in WIRE_FIELDS if mod is module}
        for name, message in module.DESCRIPTOR.message_types_by_name.items():
            fields = {(name, f) for f in message.fields_by_name}
            if (module, name) in EMPTY:
                assert not fields
            else:
                assert fields and fields <= checked, name
    share_id = dra_pb2.DESCRIPTOR.message_types_by_name["Device"].fields_by_name["share_id"]
    assert share_id.has_presence  # `optional` in the kubelet's proto


SERVICES = {
    DRA_SERVICE: (
        dra_pb2,
        {
            "NodePrepareResources": ("NodePrepareResourcesRequest", "NodePrepareResourcesResponse"),
            "NodeUnprepareResources": (
                "NodeUnprepareResourcesRequest",
                "NodeUnprepareResourcesResponse",
            ),
        },
    ),
    REGISTRATION_SERVICE: (
        pluginregistration_pb2,
        {
            "GetInfo": ("InfoRequest", "PluginInfo"),
            "NotifyRegistrationStatus": ("RegistrationStatus", "RegistrationStatusResponse"),
        },
    ),
}


@pytest.mark.parametrize("service", sorted(SERVICES), ids=sorted(SERVICES))
def test_services_and_methods(service: str) -> None:
    module, expected = SERVICES[service]
    package, _, name = service.rpartition(".")
    assert module.DESCRIPTOR.package == package
    descriptor = module.DESCRIPTOR.services_by_name[name]
    assert descriptor.full_name == service
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in descriptor.methods}
    assert methods == expected
    assert not any(m.server_streaming or m.client_streaming for m in descriptor.methods)
