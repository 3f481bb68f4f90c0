"""The chart writes the contract's names as YAML, where ``neuron_cores`` cannot reach: check that
its defaults and templates say what ``neuron_cores`` says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from neuron_cores import CORE_RESOURCE, DEVICE_RESOURCE, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY

VALUES = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups" / "values.yaml"
Render = Callable[..., list[dict[str, Any]]]
TOLERATE = {"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": NEURON_TAINT_EFFECT}


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def test_default_resource_names_are_the_contracts() -> None:
    values = _values()
    assert values["devicePlugin"]["resourceNames"] == {
        "core": CORE_RESOURCE,
        "device": DEVICE_RESOURCE,
    }
    assert values["dra"]["deviceClasses"]["extendedResourceName"] == CORE_RESOURCE
    assert set(values["autoscaling"]["karpenter"]["nodePool"]["limits"]) == {CORE_RESOURCE}


def test_default_tolerations_tolerate_the_neuron_taint() -> None:
    values = _values()
    assert TOLERATE in values["devicePlugin"]["tolerations"]
    assert TOLERATE in values["dra"]["driver"]["tolerations"]


def test_karpenter_nodes_carry_the_neuron_taint(render: Render) -> None:
    objs = render(set_values=["autoscaling.karpenter.nodePool.enabled=true"])
    (pool,) = [o for o in objs if o["kind"] == "NodePool"]
    taints = pool["spec"]["template"]["spec"]["taints"]
    assert taints == [{"key": NEURON_TAINT_KEY, "effect": NEURON_TAINT_EFFECT}]
