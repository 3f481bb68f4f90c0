"""The DeviceClasses that select this driver's blocks (pure: the objects' JSON bodies).

* ``neuroncores.neurongroups.dev``: every block; a claim adds a selector on ``cores`` (and
  anything else it cares about, such as ``neuronDevices == 1``).
* ``neuroncore.neurongroups.dev``: 1-core blocks only, with ``extendedResourceName``
  ``aws.amazon.com/neuroncore``, so a pod that asks for ``aws.amazon.com/neuroncore: N`` in its
  resources is served by N single-core blocks on nodes that do not run the device plugin.  Those N
  cores need not be contiguous: workloads that need contiguity use a claim for one N-core block.

The chart (``charts/neuron-groups/templates/dra/deviceclasses.yaml``) renders the same objects;
a test compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuron_cores import CORE_RESOURCE
from neuron_dra_driver.layout import API_VERSION, DRIVER_NAME

BLOCKS_CLASS = DRIVER_NAME
SINGLE_CORE_CLASS = "neuroncore.neurongroups.dev"


def cores_expression(cores: int) -> str:
    """The CEL selector for blocks of exactly ``cores`` cores."""
    return f'device.attributes["{DRIVER_NAME}"].cores == {cores}'


def block_size(claim: Mapping[str, Any]) -> int:
    """The cores a ResourceClaim's block requests ask for (``block_claim``'s selector read
    back); 0 when it asks for no block of ours with a size."""
    total = 0
    for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []:
        exactly = request.get("exactly") or {}
        if exactly.get("deviceClassName") != BLOCKS_CLASS:
            continue
        for selector in exactly.get("selectors") or []:
            expression = str((selector.get("cel") or {}).get("expression") or "")
            prefix = cores_expression(0)[:-1]
            size = expression[len(prefix) :] if expression.startswith(prefix) else ""
            if size.isascii() and size.isdigit():
                total += int(size) * max(int(exactly.get("count") or 1), 1)
    return total


def device_classes() -> list[dict[str, Any]]:
    driver = f'device.driver == "{DRIVER_NAME}"'
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "DeviceClass",
            "metadata": {"name": BLOCKS_CLASS},
            "spec": {"selectors": [{"cel": {"expression": driver}}]},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "DeviceClass",
            "metadata": {"name": SINGLE_CORE_CLASS},
            "spec": {
                "selectors": [{"cel": {"expression": f"{driver} && {cores_expression(1)}"}}],
                "extendedResourceName": CORE_RESOURCE,
            },
        },
    ]


def block_claim(name: str, cores: int, *, namespace: str | None = None) -> dict[str, Any]:
    """A ResourceClaim for one block of exactly ``cores`` contiguous cores."""
    if cores <= 0:
        raise ValueError(f"a block claim needs at least 1 core, got {cores}")
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": metadata,
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "cores",
                        "exactly": {
                            "deviceClassName": BLOCKS_CLASS,
                            "selectors": [{"cel": {"expression": cores_expression(cores)}}],
                        },
                    }
                ]
            }
        },
    }
