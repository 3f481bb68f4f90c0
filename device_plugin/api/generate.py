"""Regenerate ``deviceplugin_pb2.py`` and ``deviceplugin_pb2.pyi`` from ``deviceplugin.proto``.

Run ``python -m neuron_device_plugin.api.generate`` after editing the ``.proto``.  The proto is
compiled under the virtual path ``neuron_device_plugin/api/`` so that the descriptor's file name
and the generated module name match the installed package, whatever the folder is called on disk.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

API_DIR = Path(__file__).resolve().parent
PROTO_NAME = "deviceplugin.proto"
VIRTUAL_DIR = "neuron_device_plugin/api"
GENERATED_NAMES = ("deviceplugin_pb2.py", "deviceplugin_pb2.pyi")
# protoc writes bare ``Mapping`` in the stub; mypy --strict would reject that generated line, so the
# stub gets one directive on top rather than a project-wide exception.
PYI_HEADER = '# mypy: disable-error-code="type-arg"\n'


def generate_into(out_root: Path) -> dict[str, Path]:
    """Compile the proto with output under ``out_root``; return generated file name -> path."""
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL_DIR}={API_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"{VIRTUAL_DIR}/{PROTO_NAME}",
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} compiling {API_DIR / PROTO_NAME}")
    generated = {name: out_root / VIRTUAL_DIR / name for name in GENERATED_NAMES}
    stub = generated["deviceplugin_pb2.pyi"]
    stub.write_text(PYI_HEADER + stub.read_text())
    return generated


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in generate_into(Path(tmp)).items():
            shutil.copyfile(path, API_DIR / name)
            print(f"wrote {API_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
