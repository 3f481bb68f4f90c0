"""Regenerate ``dra_pb2`` and ``pluginregistration_pb2`` (``.py`` and ``.pyi``) from their protos.

Run ``python -m neuron_dra_driver.api.generate`` after editing a ``.proto``; how and why the
modules are generated is in ``neuron_cores.protogen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores.protogen import compile_proto, regenerate

API_DIR = Path(__file__).resolve().parent
PROTO_NAMES = ("dra.proto", "pluginregistration.proto")
VIRTUAL_DIR = "neuron_dra_driver/api"
GENERATED_NAMES = tuple(
    f"{Path(name).stem}_pb2{suffix}" for name in PROTO_NAMES for suffix in (".py", ".pyi")
)


def generate_into(out_root: Path) -> dict[str, Path]:
    """Compile both protos with output under ``out_root``; return generated file name -> path."""
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
