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
from tritonclient.grpc import service_pb2
fd = service_pb2.DESCRIPTOR
def walk(d, out):
    out[d.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        walk(n, out)
out = {}
for m in fd.message_types_by_name.values():
    walk(m, out)
service = fd.services_by_name["GRPCInferenceService"]
methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
json.dump({"messages": out, "methods": methods}, sys.stdout)
"""


def _walk(descriptor: Descriptor, out: dict[str, Any]) -> None:
    out[descriptor.full_name] = {
        f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields
    }
    for nested in descriptor.nested_types:
        _walk(nested, out)


def _ours(fd: FileDescriptor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for message in fd.message_types_by_name.values():
        _walk(message, out)
    return out


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
    ours = _ours(pb.DESCRIPTOR)
    assert len(ours) >= 20
    for name, fields in ours.items():
        if name.endswith("Entry"):  # map entries: key=1, value=2 by definition
            continue
        assert name in triton["messages"], name
        for field, (number, kind, label) in fields.items():
            assert triton["messages"][name].get(field) == [number, kind, label], (name, field)
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert len(service.methods) == 6
    for method in service.methods:
        assert triton["methods"][method.name] == [
            method.input_type.full_name,
            method.output_type.full_name,
        ]
