"""Our inference.proto: generated code is current, and field numbers match the public protocol.

The reference for "public protocol" is the descriptor tritonclient ships (Triton's superset of
KServe v2).  It is read in a subprocess: both files define ``inference.*`` messages, and one
process's default descriptor pool refuses the same names from two files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor

from neuron_runtime.serving import inference_pb2 as pb
from neuron_runtime.serving.regenerate_proto import PROTO, compile_proto

DUMP_TRITON = """
import json, sys
from tritonclient.grpc import model_config_pb2, service_pb2
fd = service_pb2.DESCRIPTOR
def walk(d, out, enums):
    out[d.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        walk(n, out, enums)
    for e in d.enum_types:
        enums[e.full_name] = {v.name: v.number for v in e.values}
out, enums = {}, {}
for f in (fd, model_config_pb2.DESCRIPTOR):
    for m in f.message_types_by_name.values():
        walk(m, out, enums)
    for e in f.enum_types_by_name.values():
        enums[e.full_name] = {v.name: v.number for v in e.values}
service = fd.services_by_name["GRPCInferenceService"]
methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
json.dump({"messages": out, "enums": enums, "methods": methods}, sys.stdout)
"""


def _walk(descriptor: Descriptor, out: dict[str, Any], enums: dict[str, Any]) -> None:
    out[descriptor.full_name] = {
        f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields
    }
    for nested in descriptor.nested_types:
        _walk(nested, out, enums)
    for enum in descriptor.enum_types:
        enums[enum.full_name] = {v.name: v.number for v in enum.values}


def _ours(fd: FileDescriptor) -> tuple[dict[str, Any], dict[str, Any]]:
    out: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    for message in fd.message_types_by_name.values():
        _walk(message, out, enums)
    for enum in fd.enum_types_by_name.values():
        enums[enum.full_name] = {v.name: v.number for v in enum.values}
    return out, enums


def _drop_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    # protoc's descriptor set spells out json_name; the Python generator leaves it implicit.
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    descriptor_set = tmp_path / "set.pb"
    compile_proto(tmp_path, descriptor_set=descriptor_set)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    for message in fresh.message_type:
        _drop_json_names(message)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh, (
        f"runtime/serving/inference_pb2.py is stale against {PROTO.name}: run "
        "python -m neuron_runtime.serving.regenerate_proto"
    )
    assert (tmp_path / "neuron_runtime/serving/inference_pb2.pyi").exists()


def test_field_numbers_and_methods_match_tritonclient() -> None:
    result = subprocess.run(
        [sys.executable, "-c", DUMP_TRITON], capture_output=True, text=True, check=True, timeout=60
    )
    triton = json.loads(result.stdout)
    ours, our_enums = _ours(pb.DESCRIPTOR)
    assert len(ours) >= 30
    for name, fields in ours.items():
        if name.endswith("Entry"):  # map entries: key=1, value=2 by definition
            continue
        assert name in triton["messages"], name
        for field, (number, kind, label) in fields.items():
            assert triton["messages"][name].get(field) == [number, kind, label], (name, field)
    # The configuration extension's enums are read by name (perf_analyzer prints the config as
    # JSON), and by number on the wire: both must agree with Triton's.
    assert set(our_enums) >= {
        "inference.DataType",
        "inference.ModelInput.Format",
        "inference.ModelInstanceGroup.Kind",
    }
    for name, values in our_enums.items():
        assert name in triton["enums"], name
        for value, number in values.items():
            assert triton["enums"][name].get(value) == number, (name, value)
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert len(service.methods) == 8
    for method in service.methods:
        assert triton["methods"][method.name] == [
            method.input_type.full_name,
            method.output_type.full_name,
        ]
