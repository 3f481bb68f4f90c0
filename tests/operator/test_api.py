"""Spec parsing: every bad value is refused with its field, the value and what to do."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator import api
from neuron_operator.api import (
    DEFAULT_VOLUME_TYPES,
    ISOLATION_SHARED,
    MAX_ENV_TEXT,
    MAX_PLAN_TEXT,
    InvalidSpecError,
    VolumePolicy,
    check_name,
    parse_host_paths,
    parse_spec,
    parse_volume_types,
    plan_text_size,
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
    (
        "env-integer-value",
        raw_spec(env=[{"name": "FOO", "value": 5}]),
        ["spec.env[0].value: 5 is not a string", "quote it"],
    ),
    (
        "env-unknown-field",
        raw_spec(env=[{"name": "FOO", "value": "1", "valuee": "x"}]),
        ["spec.env[0].valuee: 'x' is not a field", "name, value, valueFrom"],
    ),
    (
        "env-two-sources",
        raw_spec(env=[{"name": "F", "valueFrom": {"fieldRef": {}, "secretKeyRef": {}}}]),
        ["spec.env[0].valueFrom", "exactly one of configMapKeyRef"],
    ),
    (
        "env-value-and-source",
        raw_spec(env=[{"name": "F", "value": "1", "valueFrom": {"fieldRef": {}}}]),
        ["spec.env[0]: 'F' has both value and valueFrom"],
    ),
    (
        "env-too-large",
        raw_spec(env=[{"name": f"E{i}", "value": "x" * 1024} for i in range(65)]),
        ["spec.env:", f"more than the {MAX_ENV_TEXT} characters"],
    ),
    (
        "path-with-quote",
        raw_spec(models=[{"name": "a", "path": '/m/"a"', "cores": 1}]),
        ["spec.models[0].path", "printable ASCII"],
    ),
    (
        "path-not-ascii",
        raw_spec(models=[{"name": "a", "path": "/m/\u00e9", "cores": 1}]),
        ["spec.models[0].path", "printable ASCII"],
    ),
    (
        "plan-too-large",
        raw_spec(
            cores=1,
            models=[
                {"name": f"m{i:02d}", "path": f"/models/m{i:02d}", "cores": 1, "copies": 4096}
                for i in range(64)
            ],
        ),
        ["spec.models: '262144 copies' need up to", f"more than {MAX_PLAN_TEXT}"],
    ),
    (
        "mount-unknown-field",
        raw_spec(
            volumes=[{"name": "v", "emptyDir": {}}],
            volumeMounts=[{"name": "v", "mountPath": "/v", "mountpath": "/w"}],
        ),
        ["spec.volumeMounts[0].mountpath: '/w' is not a field"],
    ),
    (
        "mount-bidirectional",
        raw_spec(
            volumes=[{"name": "v", "emptyDir": {}}],
            volumeMounts=[{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}],
        ),
        ["spec.volumeMounts[0].mountPropagation: 'Bidirectional' is not allowed"],
    ),
    (
        "toleration-bad-operator",
        raw_spec(tolerations=[{"key": "k", "operator": "Any"}]),
        ["spec.tolerations[0].operator: 'Any' is not allowed", "Exists"],
    ),
    (
        "toleration-unknown-field",
        raw_spec(tolerations=[{"key": "k", "operator": "Exists", "extra": 1}]),
        ["spec.tolerations[0].extra: 1 is not a field"],
    ),
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


def volumes_spec(*volumes: dict[str, Any], read_only: bool = True) -> dict[str, Any]:
    mounts = [{"name": v["name"], "mountPath": f"/{v['name']}"} for v in volumes]
    for mount in mounts:
        mount["readOnly"] = read_only
    return raw_spec(volumes=list(volumes), volumeMounts=mounts)


MODELS_HOST = VolumePolicy(host_paths=("/srv/models",))
TOKEN = {"serviceAccountToken": {"path": "token"}}
VOLUME_CASES = [
    (
        "host-root-by-default",
        {"name": "root", "hostPath": {"path": "/"}},
        VolumePolicy(),
        "spec.volumes[0].hostPath: 'root' uses volume type hostPath, which NeuronWorkloads may "
        "not use here; use one of emptyDir, configMap, secret, persistentVolumeClaim, image, "
        "projected, downwardAPI; hostPath needs the operator's --allowed-host-paths",
    ),
    (
        "host-outside-prefix",
        {"name": "etc", "hostPath": {"path": "/etc"}},
        MODELS_HOST,
        "spec.volumes[0].hostPath.path: '/etc' is not under a host folder NeuronWorkloads may "
        "mount (volume 'etc'); use a folder under /srv/models",
    ),
    (
        "host-sibling-of-prefix",
        {"name": "m", "hostPath": {"path": "/srv/models-other"}},
        MODELS_HOST,
        "'/srv/models-other' is not under a host folder",
    ),
    (
        "host-parent-escape",
        {"name": "m", "hostPath": {"path": "/srv/models/../../etc"}},
        MODELS_HOST,
        "'/srv/models/../../etc' is not under a host folder",
    ),
    (
        "projected-token",
        {"name": "t", "projected": {"sources": [TOKEN]}},
        VolumePolicy(),
        "spec.volumes[0].projected.sources[0]: ['serviceAccountToken'] is not one allowed "
        "projected source (volume 't'); use one of configMap, secret, downwardAPI",
    ),
    (
        "csi-by-default",
        {"name": "c", "csi": {"driver": "x"}},
        VolumePolicy(),
        "uses volume type csi, which NeuronWorkloads may not use here",
    ),
    (
        "unknown-type",
        {"name": "n", "nfs": {"server": "s", "path": "/"}},
        VolumePolicy(),
        "uses volume type nfs, which NeuronWorkloads may not use here",
    ),
    (
        "two-sources",
        {"name": "n", "emptyDir": {}, "secret": {"secretName": "s"}},
        VolumePolicy(),
        "spec.volumes[0]: ['emptyDir', 'secret'] is not exactly one volume source (volume 'n')",
    ),
    (
        "no-source",
        {"name": "n"},
        VolumePolicy(),
        "spec.volumes[0]: [] is not exactly one volume source",
    ),
]


@pytest.mark.parametrize(
    ("volume", "policy", "message"),
    [c[1:] for c in VOLUME_CASES],
    ids=[c[0] for c in VOLUME_CASES],
)
def test_volumes_outside_the_policy_are_refused_naming_the_volume(
    volume: dict[str, Any], policy: VolumePolicy, message: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(volumes_spec(volume), policy)
    assert message in str(caught.value)


ALLOWED_CASES = [
    ("empty-dir", {"name": "v", "emptyDir": {}}, VolumePolicy()),
    ("pvc", {"name": "v", "persistentVolumeClaim": {"claimName": "models"}}, VolumePolicy()),
    ("image", {"name": "v", "image": {"reference": "models:1"}}, VolumePolicy()),
    (
        "projected-config",
        {"name": "v", "projected": {"sources": [{"configMap": {"name": "c"}}]}},
        VolumePolicy(),
    ),
    ("host-at-prefix", {"name": "v", "hostPath": {"path": "/srv/models"}}, MODELS_HOST),
    ("host-under-prefix", {"name": "v", "hostPath": {"path": "/srv/models/a/"}}, MODELS_HOST),
    ("csi-opted-in", {"name": "v", "csi": {"driver": "d"}}, VolumePolicy(types=("csi",))),
]


@pytest.mark.parametrize(
    ("volume", "policy"), [c[1:] for c in ALLOWED_CASES], ids=[c[0] for c in ALLOWED_CASES]
)
def test_volumes_inside_the_policy_pass(volume: dict[str, Any], policy: VolumePolicy) -> None:
    spec = parse_spec(volumes_spec(volume), policy)
    assert spec.pod.volumes == (volume,)


def test_host_path_mounts_must_be_read_only() -> None:
    volume = {"name": "m", "hostPath": {"path": "/srv/models"}}
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(volumes_spec(volume, read_only=False), MODELS_HOST)
    assert "spec.volumeMounts[0].readOnly: False is not true for hostPath volume 'm'" in str(
        caught.value
    )


def test_configured_policy_applies_when_none_is_given() -> None:
    spec = volumes_spec({"name": "m", "hostPath": {"path": "/srv/models/a"}})
    with pytest.raises(InvalidSpecError, match="uses volume type hostPath"):
        parse_spec(spec)
    api.configure_volume_policy(MODELS_HOST)
    try:
        assert parse_spec(spec).pod.volumes[0]["hostPath"] == {"path": "/srv/models/a"}
    finally:
        api.configure_volume_policy(api.DEFAULT_VOLUME_POLICY)


FLAG_CASES = [
    ("types-default-list", parse_volume_types, ",".join(DEFAULT_VOLUME_TYPES), None),
    ("types-host-path", parse_volume_types, "emptyDir,hostPath", "allow hostPath with"),
    ("types-unknown", parse_volume_types, "nfs", "'nfs' is not a volume type"),
    ("paths-relative", parse_host_paths, "srv/models", "'srv/models' is not an absolute"),
    ("paths-parent", parse_host_paths, "/srv/../etc", "'/srv/../etc' is not an absolute"),
    ("paths-two", parse_host_paths, "/a, /b", None),
]


@pytest.mark.parametrize(
    ("parse", "text", "error"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES]
)
def test_policy_flag_values(parse: Any, text: str, error: str | None) -> None:
    if error is None:
        assert all(isinstance(v, str) and v for v in parse(text))
    else:
        with pytest.raises(ValueError, match=error):
            parse(text)


def test_plan_text_bound_is_exact_at_the_limit() -> None:
    path = "/" + "p" * 1021  # "m=" + path + "," is 1025 characters a copy
    copies = MAX_PLAN_TEXT // 1025
    model = {"name": "m", "path": path, "cores": 1, "copies": copies}
    spec = parse_spec(raw_spec(models=[model]))
    assert MAX_PLAN_TEXT - 1025 < plan_text_size(spec.models) <= MAX_PLAN_TEXT
    with pytest.raises(InvalidSpecError, match="need up to"):
        parse_spec(raw_spec(models=[{**model, "copies": copies + 1}]))
