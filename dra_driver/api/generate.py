"""Regenerate ``dra_pb2`` and ``pluginregistration_pb2`` (``.py`` and ``.pyi``) from their protos.

Run ``python -m neuron_dra_driver.api.generate`` after editing a ``.proto``; how and why the
modules are generated is in ``neuron_cores.protogen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores.protogen import ProtoSet

PROTOS = ProtoSet(
    api_dir=Path(__file__).resolve().parent,
    proto_names=("dra.proto", "pluginregistration.proto"),
    virtual_dir="neuron_dra_driver/api",
)
API_DIR = PROTOS.api_dir
GENERATED_NAMES = PROTOS.generated_names
generate_into = PROTOS.generate_into

if __name__ == "__main__":
    sys.exit(PROTOS.main())
