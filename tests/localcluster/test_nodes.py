"""Node specs and manifests for kwok-simulated and emulated Neuron nodes."""

from __future__ import annotations

import pytest

from neuron_cores import UnknownInstanceTypeError
from neuron_localcluster import nodes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2xinf1.6xlarge", ["inf1.6xlarge", "inf1.6xlarge"]),
        ("inf2.xlarge, 1xtrn1.2xlarge", ["inf2.xlarge", "trn1.2xlarge"]),
        ("", []),
    ],
    ids=["count", "mixed", "none"],
)
def test_parse_node_specs(text: str, expected: list[str]) -> None:
    assert [s.instance_type for s in nodes.parse_node_specs(text, emulated=False)] == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0xinf1.6xlarge", ValueError),
        ("2yinf1.6xlarge", ValueError),
        ("m5.large", UnknownInstanceTypeError),
        ("\u00b2xinf1.6xlarge", ValueError),
        ("\u0663xinf1.6xlarge", ValueError),
    ],
    ids=["zero-count", "bad-separator", "not-neuron", "superscript-count", "arabic-indic-count"],
)
def test_parse_node_specs_rejects(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        nodes.parse_node_specs(text, emulated=True)


def test_names_are_stable_and_distinct() -> None:
    specs = nodes.parse_node_specs("2xinf1.6xlarge", emulated=False)
    specs += nodes.parse_node_specs("inf1.6xlarge", emulated=True)
    assert [s.name for s in nodes.name_nodes(specs)] == [
        "kwok-inf1-6xlarge-1",
        "kwok-inf1-6xlarge-2",
        "emulated-inf1-6xlarge-1",
    ]


@pytest.mark.parametrize(
    ("itype", "cores", "devices"),
    [("inf1.6xlarge", "16", "4"), ("inf2.48xlarge", "24", "12"), ("trn1.32xlarge", "32", "16")],
    ids=["inf1.6xlarge", "inf2.48xlarge", "trn1.32xlarge"],
)
def test_kwok_node_manifest(itype: str, cores: str, devices: str) -> None:
    node = nodes.node_manifest(nodes.NodeSpec("n", itype))
    assert node["metadata"]["labels"][nodes.INSTANCE_TYPE_LABEL] == itype
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["spec"]["taints"] == [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]
    for part in ("capacity", "allocatable"):
        assert node["status"][part]["aws.amazon.com/neuroncore"] == cores
        assert node["status"][part]["aws.amazon.com/neuron"] == devices


def test_emulated_node_is_not_kwoks_and_takes_the_plugins_counts() -> None:
    node = nodes.node_manifest(
        nodes.NodeSpec("e", "inf1.6xlarge", emulated=True),
        capacity={"aws.amazon.com/neuroncore": "16", "aws.amazon.com/neuron": "4"},
        allocatable={"aws.amazon.com/neuroncore": "15", "aws.amazon.com/neuron": "3"},
    )
    assert "kwok.x-k8s.io/node" not in node["metadata"]["annotations"]
    assert node["status"]["capacity"]["aws.amazon.com/neuroncore"] == "16"
    assert node["status"]["allocatable"]["aws.amazon.com/neuroncore"] == "15"
