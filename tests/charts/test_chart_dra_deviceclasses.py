"""The chart's DeviceClasses equal the driver's own; off by default."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_dra_driver.classes import device_classes
from neuron_localcluster.clitools import ensure_helm

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups"
TEMPLATE = "templates/dra/deviceclasses.yaml"


def _helm(*sets: str) -> subprocess.CompletedProcess[str]:
    args = [str(ensure_helm()), "template", "ng", str(CHART)]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _classes(*sets: str) -> list[dict[str, Any]]:
    proc = _helm(*sets)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return [d for d in docs if d["kind"] == "DeviceClass"]


def _strip_labels(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**o, "metadata": {"name": o["metadata"]["name"]}} for o in objects]


def test_no_device_classes_by_default() -> None:
    assert _classes() == []


def test_enabled_classes_equal_the_drivers_own() -> None:
    rendered = _classes("dra.deviceClasses.enabled=true")
    assert _strip_labels(rendered) == device_classes()
    assert all(o["metadata"]["labels"]["app.kubernetes.io/component"] == "dra" for o in rendered)


def test_an_empty_extended_resource_name_leaves_the_field_out() -> None:
    rendered = _classes("dra.deviceClasses.enabled=true", "dra.deviceClasses.extendedResourceName=")
    assert [("extendedResourceName" in o["spec"]) for o in rendered] == [False, False]


@pytest.mark.parametrize(
    "value",
    ["neuroncore", "aws.amazon.com/neuron core", "AWS.com/x"],
    ids=["no-domain", "space", "upper-domain"],
)
def test_schema_refuses_a_bad_extended_resource_name(value: str) -> None:
    proc = _helm(
        "dra.deviceClasses.enabled=true", f"dra.deviceClasses.extendedResourceName={value}"
    )
    assert proc.returncode != 0
    assert "/dra/deviceClasses/extendedResourceName" in proc.stderr, proc.stderr
