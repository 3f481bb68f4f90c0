"""Regenerate ``inference_pb2.py`` / ``.pyi`` from ``inference.proto`` with grpcio-tools.

The generated modules are committed so that installing the package needs no protoc.  A test
(tests/runtime/serving/test_proto.py) compiles the .proto again and compares descriptors, so an edit
to the .proto without running this fails the build rather than shipping stale code.  Only the
message module is generated: the service is registered by hand in ``grpc_frontend`` with typed
handlers, which keeps mypy strict and avoids depending on grpc's version-stamped stubs.

Run: ``python -m neuron_runtime.serving.regenerate_proto``
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path(__file__).with_name("inference.proto")


def compile_proto(out_dir: Path, *, descriptor_set: Path | None = None) -> None:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO.parent}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    if descriptor_set is not None:
        args.append(f"--descriptor_set_out={descriptor_set}")
    args.append(str(PROTO))
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO}")


def main() -> int:
    compile_proto(PROTO.parent)
    print(f"regenerated inference_pb2.py and inference_pb2.pyi in {PROTO.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
