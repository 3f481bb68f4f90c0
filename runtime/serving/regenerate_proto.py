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

import shutil
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).resolve().with_name("inference.proto")
VIRTUAL_DIR = "neuron_runtime/serving"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi")
# protoc writes bare ``Mapping`` in the stub, which mypy --strict rejects: one directive on top of
# the generated stub instead of a project-wide exception.
PYI_HEADER = '# mypy: disable-error-code="type-arg"\n'


def compile_proto(out_dir: Path, *, descriptor_set: Path | None = None) -> dict[str, Path]:
    """Compile into ``out_dir``; return generated file name -> path."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL_DIR}={PROTO.parent}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    if descriptor_set is not None:
        args.append(f"--descriptor_set_out={descriptor_set}")
    args.append(f"{VIRTUAL_DIR}/{PROTO.name}")
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO}")
    generated = {name: out_dir / VIRTUAL_DIR / name for name in GENERATED}
    stub = generated["inference_pb2.pyi"]
    stub.write_text(PYI_HEADER + stub.read_text())
    return generated


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in compile_proto(Path(tmp)).items():
            shutil.copyfile(path, PROTO.parent / name)
    print(f"regenerated {', '.join(GENERATED)} in {PROTO.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
