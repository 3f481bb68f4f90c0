"""values.yaml, values.schema.json and the validation template: bad values fail clearly."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_cores import INSTANCE_TYPES

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuron-groups"
HelmRun = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


def _template(helm_run: HelmRun, *sets: str) -> subprocess.CompletedProcess[str]:
    args = ["template", "ng", str(CHART)]
    for s in sets:
        # "json:" marks a --set-json value (helm's --set cannot express an empty list)
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    return helm_run(*args, check=False)


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (["operator.replica=3"], ["additional properties", "replica"]),
        (["operator.replicas=-1"], ["/operator/replicas", "minimum"]),
        (["operator.logFormat=yaml"], ["/operator/logFormat"]),
        (["devicePlugin.backend=nvidia"], ["/devicePlugin/backend"]),
        (["image.digest=latest"], ["/image/digest"]),
        (["devicePlugin.resourceNames.core=neuroncore"], ["/devicePlugin/resourceNames/core"]),
        (["operator.metrics.port=70000"], ["/operator/metrics/port"]),
        (["serviceMonitor.interval=soon"], ["/serviceMonitor/interval"]),
        (["devicePlugin.simulatedInstanceType=m5.large"], ["/devicePlugin/simulatedInstanceType"]),
    ],
    ids=[
        "unknown-key",
        "negative-replicas",
        "log-format",
        "backend",
        "digest",
        "resource-name",
        "port",
        "interval",
        "simulated-type",
    ],
)
def test_schema_refuses_bad_values(helm_run: HelmRun, sets: list[str], needles: list[str]) -> None:
    proc = _template(helm_run, *sets)
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (
            ["operator.replicas=2", "operator.leaderElection.enabled=false"],
            [
                "operator.replicas=2",
                "operator.leaderElection.enabled=false",
                "Set operator.leaderElection",
            ],
        ),
        (
            ["json:devicePlugin.instanceTypes=[]"],
            ["devicePlugin.instanceTypes is empty", "every node"],
        ),
        (
            ["devicePlugin.resourceNames.device=aws.amazon.com/neuroncore"],
            ['both "aws.amazon.com/neuroncore"', "different names"],
        ),
        (
            [
                "serviceMonitor.enabled=true",
                "operator.metrics.service.enabled=false",
                "devicePlugin.metrics.service.enabled=false",
                "tests.enabled=false",
            ],
            ["nothing to scrape"],
        ),
        (
            ["tests.checkDevicePlugin=true", "devicePlugin.enabled=false"],
            ["tests.checkDevicePlugin=true"],
        ),
        (
            ["operator.enabled=false"],
            ["nothing for `helm test` to check", "tests.enabled=false"],
        ),
        (
            [
                "autoscaling.clusterAutoscaler.nodeGroups[0].name=g",
                "autoscaling.clusterAutoscaler.nodeGroups[0].instanceType=p4d.24xlarge",
            ],
            ["nodeGroups[0] (g)", '"p4d.24xlarge"', "inf1.6xlarge"],
        ),
        (
            [
                "autoscaling.clusterAutoscaler.nodeGroups[0].name=g",
                "autoscaling.clusterAutoscaler.nodeGroups[0].instanceType=inf2.48xlarge",
                "devicePlugin.instanceTypes={inf1.6xlarge}",
            ],
            ["does not list inf2.48xlarge"],
        ),
        (
            [
                "autoscaling.karpenter.nodePool.enabled=true",
                "json:autoscaling.karpenter.nodePool.instanceFamilies=[]",
            ],
            ["no instanceFamilies"],
        ),
        (
            [
                "autoscaling.karpenter.nodePool.enabled=true",
                "autoscaling.karpenter.nodePool.instanceFamilies={inf2,p5}",
            ],
            ['"p5", which is not a Neuron instance family'],
        ),
    ],
    ids=[
        "replicas-without-leader-election",
        "plugin-everywhere",
        "same-resource-names",
        "monitor-nothing",
        "test-missing-plugin",
        "test-nothing",
        "ca-unknown-type",
        "ca-type-without-plugin",
        "karpenter-no-families",
        "karpenter-bad-family",
    ],
)
def test_validation_refuses_contradictions(
    helm_run: HelmRun, sets: list[str], needles: list[str]
) -> None:
    proc = _template(helm_run, *sets)
    assert proc.returncode != 0, "contradictory values were accepted"
    assert "neuron-groups:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _schema_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of values keys the chart itself defines (not Kubernetes/Karpenter pass-throughs)."""
    paths: set[tuple[str, ...]] = set()
    for key, sub in schema.get("properties", {}).items():
        path = (*prefix, key)
        paths.add(path)
        described = str(sub.get("description", ""))
        if sub.get("additionalProperties") is False and not described.startswith(
            ("Kubernetes ", "Karpenter ")
        ):
            paths |= _schema_paths(sub, path)
    return paths


def _commented_paths(text: str) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """(paths of keys in values.yaml, those with a comment line right above them)."""
    keyed: set[tuple[str, ...]] = set()
    commented: set[tuple[str, ...]] = set()
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            path = tuple(name for _, name in stack)
            keyed.add(path)
            if previous.lstrip().startswith("#"):
                commented.add(path)
        if line.strip():
            previous = line
    return keyed, commented


def test_every_values_key_has_a_comment() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    keyed, commented = _commented_paths((CHART / "values.yaml").read_text())
    required = _schema_paths(schema) & keyed
    assert len(required) > 80
    missing = sorted(".".join(p) for p in required - commented)
    assert not missing, f"values.yaml keys without a comment: {missing}"


def test_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} is not strict"
            for key, sub in node["properties"].items():
                walk(sub, f"{path}/{key}")

    walk(schema, "")


def test_every_values_key_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, sub: dict[str, Any], path: str) -> None:
        if isinstance(node, dict) and "properties" in sub:
            for key, value in node.items():
                assert key in sub["properties"], f"{path}/{key} is not in the schema"
                walk(value, sub["properties"][key], f"{path}/{key}")

    walk(values, schema, "")


def test_instance_type_table_matches_neuron_cores() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "neuron-groups.instanceTypes" -}}', 1)[1].split("{{- end }}")[0]
    table = yaml.safe_load(block)
    assert table == {
        name: {"devices": t.devices, "cores": t.cores} for name, t in INSTANCE_TYPES.items()
    }
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["devicePlugin"]["instanceTypes"] == list(INSTANCE_TYPES)


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (
            ["name=a", "instanceType=inf1.6xlarge"],
            [
                "node-template/resources/aws.amazon.com/neuroncore = 16",
                "node-template/resources/aws.amazon.com/neuron = 4",
                "node-template/label/node.kubernetes.io/instance-type = inf1.6xlarge",
                "node-template/taint/aws.amazon.com/neuron = :NoSchedule",
            ],
        ),
        (
            ["name=b", "instanceType=trn1.32xlarge", "taint=false"],
            ["node-template/resources/aws.amazon.com/neuroncore = 32"],
        ),
    ],
    ids=["inf1-tainted", "trn1-untainted"],
)
def test_notes_print_cluster_autoscaler_tags(
    helm_run: HelmRun, tmp_path: Path, group: list[str], expected: list[str]
) -> None:
    sets: list[str] = []
    for item in group:
        sets += ["--set", f"autoscaling.clusterAutoscaler.nodeGroups[0].{item}"]
    proc = helm_run(
        "install",
        "ng",
        str(CHART),
        "--dry-run=client",
        "-n",
        "x",
        "--kubeconfig",
        str(tmp_path / "none"),
        *sets,
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    for line in expected:
        assert line in notes
    assert ("taint/" in notes) == ("taint=false" not in group)
