"""Regenerate the ``_pb2.py`` and ``_pb2.pyi`` modules of ``deviceplugin.proto`` (Device Plugin API
v1beta1) and ``podresources.proto`` (the kubelet's PodResources API v1, List only).

Run ``python -m neuron_device_plugin.api.generate`` after editing a ``.proto``; how and why the
modules are generated is in ``neuron_cores.protogen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cores.protogen import ProtoSet

PROTOS = ProtoSet(
    api_dir=Path(__file__).resolve().parent,
    proto_names=("deviceplugin.proto", "podresources.proto"),
    virtual_dir="neuron_device_plugin/api",
)
API_DIR = PROTOS.api_dir
GENERATED_NAMES = PROTOS.generated_names
generate_into = PROTOS.generate_into

if __name__ == "__main__":
    sys.exit(PROTOS.main())
