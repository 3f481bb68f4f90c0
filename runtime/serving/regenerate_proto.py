"""Regenerate ``inference_pb2.py`` / ``.pyi`` from ``inference.proto`` with grpcio-tools.

The generated modules are committed so that installing the package needs no protoc.  A test
(tests/runtime/serving/test_proto.py) compiles the .proto again and compares descriptors, so an edit
to the .proto without running this fails the build rather than shipping stale code.  Only the
message module is generated: the service is registered by hand in ``grpc_frontend`` with typed
handlers, which keeps mypy strict and avoids depending on grpc's version-stamped stubs.

The proto is compiled under the virtual path ``neuron_runtime/serving/`` so the descriptor's file
name is unique to this package in protobuf's process-wide pool.

Run: ``python -m neuron_runtime.serving.regenerate_proto``
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores import protogen

PROTO = Path(__file__).resolve().with_name("inference.proto")
VIRTUAL_DIR = "neuron_runtime/serving"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi")


def compile_proto(out_dir: Path, *, descriptor_set: Path | None = None) -> dict[str, Path]:
    """Compile into ``out_dir``; return generated file name -> path."""
    return protogen.compile_proto(PROTO, VIRTUAL_DIR, out_dir, descriptor_set=descriptor_set)


def main() -> int:
    protogen.regenerate(PROTO, VIRTUAL_DIR)
    print(f"regenerated {', '.join(GENERATED)} in {PROTO.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
