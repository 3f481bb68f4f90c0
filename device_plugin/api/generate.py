"""Regenerate ``deviceplugin_pb2.py`` and ``deviceplugin_pb2.pyi`` from ``deviceplugin.proto``.

Run ``python -m neuron_device_plugin.api.generate`` after editing the ``.proto``; how and why the
modules are generated is in ``neuron_cores.protogen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores.protogen import compile_proto, regenerate

API_DIR = Path(__file__).resolve().parent
PROTO_NAME = "deviceplugin.proto"
VIRTUAL_DIR = "neuron_device_plugin/api"
GENERATED_NAMES = ("deviceplugin_pb2.py", "deviceplugin_pb2.pyi")


def generate_into(out_root: Path) -> dict[str, Path]:
    """Compile the proto with output under ``out_root``; return generated file name -> path."""
    return compile_proto(API_DIR / PROTO_NAME, VIRTUAL_DIR, out_root)


def main() -> int:
    for path in regenerate(API_DIR / PROTO_NAME, VIRTUAL_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
