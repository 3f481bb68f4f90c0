"""Regenerate the ``_pb2.py`` and ``_pb2.pyi`` modules of ``deviceplugin.proto`` (Device Plugin API
v1beta1) and ``podresources.proto`` (the kubelet's PodResources API v1, List only).

Run ``python -m neuron_device_plugin.api.generate`` after editing the ``.proto``; how and why the
modules are generated is in ``neuron_cores.protogen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores.protogen import compile_proto, regenerate

API_DIR = Path(__file__).resolve().parent
PROTO_NAMES = ("deviceplugin.proto", "podresources.proto")
VIRTUAL_DIR = "neuron_device_plugin/api"
GENERATED_NAMES = tuple(
    f"{name.removesuffix('.proto')}_pb2{ext}" for name in PROTO_NAMES for ext in (".py", ".pyi")
)


def generate_into(out_root: Path) -> dict[str, Path]:
    """Compile every proto with output under ``out_root``; return generated file name -> path."""
    generated: dict[str, Path] = {}
    for name in PROTO_NAMES:
        generated.update(compile_proto(API_DIR / name, VIRTUAL_DIR, out_root))
    return generated


def main() -> int:
    for name in PROTO_NAMES:
        for path in regenerate(API_DIR / name, VIRTUAL_DIR):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
