"""Spec parsing: every bad value is refused with its field, the value and what to do."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator.api import (
    ISOLATION_SHARED,
    InvalidSpecError,
    check_name,
    parse_spec,
    workload_from_object,
)


def raw_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "img",
        "instanceType": "inf1.6xlarge",
        "models": [{"name": "a", "path": "/models/a", "cores": 2}],
    }
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


def test_defaults() -> None:
    spec = parse_spec(raw_spec())
    assert (spec.isolation, spec.replicas, spec.cores, spec.node_cores) == (
        ISOLATION_SHARED,
        1,
        None,
        16,
    )
    assert spec.models[0].copies == 1


def test_node_cores_instead_of_instance_type() -> None:
    spec = parse_spec(raw_spec(instanceType=None, nodeCores=8))
    assert (spec.instance_type, spec.node_cores) == (None, 8)


BAD = [
    ("not-a-mapping", "nope", ["is not an object"]),
    ("no-models", raw_spec(models=[]), ["spec.models", "non-empty list"]),
    ("model-not-object", raw_spec(models=["a"]), ["spec.models[0]", "is not an object"]),
    (
        "zero-cores",
        raw_spec(models=[{"name": "a", "path": "/a", "cores": 0}]),
        ["spec.models[0].cores: 0", "from 1 to"],
    ),
    (
        "bool-copies",
        raw_spec(models=[{"name": "a", "path": "/a", "cores": 1, "copies": True}]),
        ["spec.models[0].copies: True is not an integer"],
    ),
    (
        "relative-path",
        raw_spec(models=[{"name": "a", "path": "models/a", "cores": 1}]),
        ["spec.models[0].path: 'models/a'", "absolute"],
    ),
    (
        "bad-model-name",
        raw_spec(models=[{"name": "a b", "path": "/a", "cores": 1}]),
        ["spec.models[0].name: 'a b'"],
    ),
    (
        "duplicate-names",
        raw_spec(models=[{"name": "a", "path": "/a", "cores": 1}] * 2),
        ["'a' is a model name used twice"],
    ),
    ("unknown-instance", raw_spec(instanceType="p4d.24xlarge"), ["'p4d.24xlarge'", "inf1.xlarge"]),
    ("both-node-fields", raw_spec(nodeCores=4), ["exactly one"]),
    ("no-node-field", raw_spec(instanceType=None), ["exactly one"]),
    ("bad-isolation", raw_spec(isolation="Pod"), ["spec.isolation: 'Pod'", "Shared or Process"]),
    ("no-image", raw_spec(image=""), ["spec.image: ''"]),
    ("negative-replicas", raw_spec(replicas=-1), ["spec.replicas: -1"]),
    (
        "model-larger-than-node",
        raw_spec(instanceType="inf1.xlarge", models=[{"name": "big", "path": "/b", "cores": 6}]),
        ["model 'big' needs 6 NeuronCores but a node of type inf1.xlarge has 4"],
    ),
    (
        "model-larger-than-node-cores",
        raw_spec(instanceType=None, nodeCores=2, models=[{"name": "b", "path": "/b", "cores": 3}]),
        ["model 'b' needs 3 NeuronCores but spec.nodeCores gives a node 2"],
    ),
    ("model-larger-than-budget", raw_spec(cores=1), ["spec.cores allows 1 per replica"]),
    (
        "reserved-env",
        raw_spec(env=[{"name": "NEURONCORE_GROUP_SIZES", "value": "1"}]),
        ["spec.env[0].name: 'NEURONCORE_GROUP_SIZES' is set by the operator"],
    ),
    (
        "mount-without-volume",
        raw_spec(volumeMounts=[{"name": "models", "mountPath": "/models"}]),
        ["spec.volumeMounts[0].name: 'models' names no volume"],
    ),
    (
        "mount-name-not-string",
        raw_spec(volumes=[{"name": ["v"]}], volumeMounts=[{"name": {}, "mountPath": "/m"}]),
        ["spec.volumeMounts[0].name: {} names no volume"],
    ),
    ("env-not-list", raw_spec(env={"A": "1"}), ["spec.env", "list of objects"]),
    ("node-selector-not-strings", raw_spec(nodeSelector={"a": 1}), ["spec.nodeSelector"]),
]


@pytest.mark.parametrize(("raw", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_are_refused_clearly(raw: Any, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(raw)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(raw_spec(image="", isolation="Pod", replicas=-2))
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize(
    "name", ["a.b", "A", "-a", "a" * 64, ""], ids=["dot", "upper", "dash", "long", "empty"]
)
def test_names_must_be_dns_labels(name: str) -> None:
    with pytest.raises(InvalidSpecError, match="DNS label"):
        check_name(name)


def test_workload_from_object_checks_kind_and_reads_identity() -> None:
    obj = {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": "w", "namespace": "ns", "uid": "u-1"},
        "spec": raw_spec(),
    }
    workload = workload_from_object(obj)
    assert (workload.name, workload.namespace, workload.uid) == ("w", "ns", "u-1")
    with pytest.raises(InvalidSpecError, match="is not a NeuronWorkload"):
        workload_from_object({**obj, "kind": "Deployment"})


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (["a"], "is not a NeuronWorkload object"),
        ("hello", "is not a NeuronWorkload object"),
        (
            {"apiVersion": "neurongroups.dev/v1alpha1", "kind": "NeuronWorkload", "metadata": "x"},
            "metadata: 'x' is not an object",
        ),
    ],
    ids=["list", "string", "metadata-string"],
)
def test_workload_from_object_refuses_non_objects(obj: Any, fragment: str) -> None:
    with pytest.raises(InvalidSpecError, match=fragment):
        workload_from_object(obj)
