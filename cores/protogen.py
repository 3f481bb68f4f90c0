"""Compiling the project's ``.proto`` files into committed Python modules, the one way.

The device plugin (Device Plugin API v1beta1) and the server (Open Inference Protocol) both
commit generated message modules, so installing the package needs no protoc, and both keep a test
that compiles the ``.proto`` again and fails when the committed code is stale.  Each proto is
compiled under a virtual path named after its package (``neuron_device_plugin/api`` ...), so the
descriptor's file name is unique in protobuf's process-wide pool whatever the folder is called on
disk.  Only message modules are generated: the services are registered by hand with typed
handlers, which keeps mypy strict.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# protoc writes bare ``Mapping`` in the stub, which mypy --strict rejects: one directive on top of
# the generated stub instead of a project-wide exception.
PYI_HEADER = '# mypy: disable-error-code="type-arg"\n'


def compile_proto(
    proto: Path, virtual_dir: str, out_dir: Path, *, descriptor_set: Path | None = None
) -> dict[str, Path]:
    """Compile ``proto`` into ``out_dir``; return generated file name -> path (.py and .pyi)."""
    # a development tool: only regenerating needs it
    from grpc_tools import protoc  # noqa: PLC0415

    args = [
        "grpc_tools.protoc",
        f"-I{virtual_dir}={proto.parent}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    if descriptor_set is not None:
        args.append(f"--descriptor_set_out={descriptor_set}")
    args.append(f"{virtual_dir}/{proto.name}")
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} compiling {proto}")
    stem = proto.stem + "_pb2"
    generated = {name: out_dir / virtual_dir / name for name in (f"{stem}.py", f"{stem}.pyi")}
    stub = generated[f"{stem}.pyi"]
    stub.write_text(PYI_HEADER + stub.read_text())
    return generated


def regenerate(proto: Path, virtual_dir: str) -> list[Path]:
    """Write the generated modules next to ``proto``; return the files written."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in compile_proto(proto, virtual_dir, Path(tmp)).items():
            shutil.copyfile(path, proto.parent / name)
            written.append(proto.parent / name)
    return written


@dataclass(frozen=True)
class ProtoSet:
    """The protos of one package's ``api`` folder, compiled under one virtual folder."""

    api_dir: Path
    proto_names: tuple[str, ...]
    virtual_dir: str

    @property
    def generated_names(self) -> tuple[str, ...]:
        return tuple(
            f"{Path(name).stem}_pb2{suffix}"
            for name in self.proto_names
            for suffix in (".py", ".pyi")
        )

    def generate_into(self, out_root: Path) -> dict[str, Path]:
        """Compile every proto with output under ``out_root``; generated file name -> path."""
        generated: dict[str, Path] = {}
        for name in self.proto_names:
            generated.update(compile_proto(self.api_dir / name, self.virtual_dir, out_root))
        return generated

    def main(self) -> int:
        """Regenerate the committed modules, printing each file written."""
        for name in self.proto_names:
            for path in regenerate(self.api_dir / name, self.virtual_dir):
                print(f"wrote {path}")
        return 0
