"""The NeuronWorkload API: its spec types, and the one parser that turns a raw spec into them.

Why one module: the CRD's OpenAPI schema and CEL rules refuse most bad specs at ``kubectl apply``
time, but the operator must never trust that (an older CRD may be installed, ``plan`` reads files
that never saw an API server, and some rules are beyond CEL).  So every check lives here too, each
problem reported with the field path, the bad value, what is accepted and what to do.  The planner
and the pod builders only ever see a ``WorkloadSpec`` that passed these checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuron_cores import GROUP_SIZES_ENV, INSTANCE_TYPES, lookup_instance_type

GROUP = "neurongroups.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NeuronWorkload"
PLURAL = "neuronworkloads"
SHORT_NAME = "nwl"

ISOLATION_SHARED = "Shared"
ISOLATION_PROCESS = "Process"
ISOLATIONS = (ISOLATION_SHARED, ISOLATION_PROCESS)

MODELS_ENV = "NEURON_MODELS"
RESERVED_ENV = (GROUP_SIZES_ENV, MODELS_ENV)

# Bounds shared with the CRD schema (tests check that the two agree).
MAX_MODELS = 64
MAX_COPIES = 4096
MAX_REPLICAS = 1000
MAX_NODE_CORES = 1024
MAX_NAME_LENGTH = 63
# The operator refuses layouts that would create more pods than this for one NeuronWorkload:
# a typo such as ``copies: 100000`` with ``Process`` should not flood the API server.
MAX_PODS = 2000

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class InvalidSpecError(ValueError):
    """A spec the operator cannot plan; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class ModelSpec:
    """One compiled model: where it lives in the container, its compiled cores, and its copies."""

    name: str
    path: str
    cores: int
    copies: int = 1


@dataclass(frozen=True)
class PodSettings:
    """Pod settings passed through unchanged (already Kubernetes-shaped dicts and lists)."""

    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    image_pull_secrets: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class WorkloadSpec:
    """A NeuronWorkload's spec after validation."""

    models: tuple[ModelSpec, ...]
    node_cores: int
    image: str
    cores: int | None = None
    isolation: str = ISOLATION_SHARED
    instance_type: str | None = None
    replicas: int = 1
    pod: PodSettings = field(default_factory=PodSettings)

    @property
    def demand(self) -> int:
        """NeuronCores one replica needs when every model copy gets its own group."""
        return sum(m.cores * m.copies for m in self.models)


@dataclass(frozen=True)
class Workload:
    """A NeuronWorkload object as the pod builders need it: identity plus the parsed spec."""

    name: str
    namespace: str
    spec: WorkloadSpec
    uid: str | None = None


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: object, problem: str, fix: str) -> None:
        self.items.append(f"spec.{path}: {value!r} {problem}; {fix}")


def _int_field(
    raw: Mapping[str, Any],
    key: str,
    path: str,
    problems: _Problems,
    *,
    minimum: int,
    maximum: int,
    default: int | None = None,
) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, value, "is not an integer", f"give a whole number from {minimum}")
        return None
    if not minimum <= value <= maximum:
        problems.add(path, value, "is out of range", f"give a number from {minimum} to {maximum}")
        return None
    return value


def _parse_model(raw: object, index: int, problems: _Problems) -> ModelSpec | None:
    path = f"models[{index}]"
    if not isinstance(raw, Mapping):
        problems.add(path, raw, "is not an object", "give {name, path, cores, copies}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or len(name) > 63:
        problems.add(
            f"{path}.name",
            name,
            "is not a valid model name",
            "use 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
        )
        name = None
    model_path = raw.get("path")
    if not isinstance(model_path, str) or not model_path.startswith("/") or "," in model_path:
        problems.add(
            f"{path}.path",
            model_path,
            "is not an absolute path without commas",
            "give the compiled model's directory inside the container, e.g. /models/resnet50",
        )
        model_path = None
    cores = _int_field(raw, "cores", f"{path}.cores", problems, minimum=1, maximum=MAX_NODE_CORES)
    copies = _int_field(
        raw, "copies", f"{path}.copies", problems, minimum=1, maximum=MAX_COPIES, default=1
    )
    if name is None or model_path is None or cores is None or copies is None:
        return None
    return ModelSpec(name=name, path=model_path, cores=cores, copies=copies)


def _parse_models(raw: object, problems: _Problems) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add("models", raw, "is not a non-empty list", "list at least one model")
        return ()
    if len(raw) > MAX_MODELS:
        problems.add("models", f"{len(raw)} models", "is too many", f"list at most {MAX_MODELS}")
        return ()
    models = [m for i, item in enumerate(raw) if (m := _parse_model(item, i, problems))]
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            problems.add(
                "models", model.name, "is a model name used twice", "give each model its own name"
            )
        seen.add(model.name)
    return tuple(models)


def _parse_node_cores(raw: Mapping[str, Any], problems: _Problems) -> tuple[str | None, int | None]:
    instance_type = raw.get("instanceType")
    has_node_cores = raw.get("nodeCores") is not None
    if (instance_type is None) == (not has_node_cores):
        problems.add(
            "instanceType",
            instance_type,
            "and spec.nodeCores must not be both given or both absent",
            "give exactly one: instanceType (e.g. inf1.6xlarge) or nodeCores",
        )
        return None, None
    if instance_type is not None:
        if not isinstance(instance_type, str) or instance_type not in INSTANCE_TYPES:
            known = ", ".join(sorted(INSTANCE_TYPES))
            problems.add(
                "instanceType",
                instance_type,
                "is not a known Neuron instance type",
                f"use one of {known}, or give spec.nodeCores instead",
            )
            return None, None
        return instance_type, lookup_instance_type(instance_type).cores
    cores = _int_field(raw, "nodeCores", "nodeCores", problems, minimum=1, maximum=MAX_NODE_CORES)
    return None, cores


def _object_list(raw: Mapping[str, Any], key: str, problems: _Problems) -> tuple[Any, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        problems.add(key, value, "is not a list of objects", "give it as in a Pod spec")
        return ()
    return tuple(value)


def _check_env(env: Sequence[Mapping[str, Any]], problems: _Problems) -> None:
    for index, item in enumerate(env):
        name = item.get("name")
        if name in RESERVED_ENV:
            problems.add(
                f"env[{index}].name",
                name,
                "is set by the operator from the plan",
                "remove it: describe the layout with spec.models, spec.cores and spec.isolation",
            )
        elif not isinstance(name, str) or not name:
            problems.add(f"env[{index}].name", name, "is not a name", "give every env entry a name")


def _check_mounts(
    mounts: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]], problems: _Problems
) -> None:
    names = [v.get("name") for v in volumes]
    for index, mount in enumerate(mounts):
        if not isinstance(mount.get("name"), str) or mount.get("name") not in names:
            problems.add(
                f"volumeMounts[{index}].name",
                mount.get("name"),
                "names no volume in spec.volumes",
                "add the volume to spec.volumes or fix the name",
            )


def _parse_pod_settings(raw: Mapping[str, Any], problems: _Problems) -> PodSettings:
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        problems.add("resources", resources, "is not an object", "give requests/limits")
        resources = {}
    node_selector = raw.get("nodeSelector") or {}
    if not isinstance(node_selector, Mapping) or not all(
        isinstance(v, str) for v in node_selector.values()
    ):
        problems.add("nodeSelector", node_selector, "is not a map of strings", "give label: value")
        node_selector = {}
    account = raw.get("serviceAccountName")
    if account is not None and not isinstance(account, str):
        problems.add("serviceAccountName", account, "is not a string", "give a ServiceAccount")
        account = None
    env = _object_list(raw, "env", problems)
    volumes = _object_list(raw, "volumes", problems)
    mounts = _object_list(raw, "volumeMounts", problems)
    _check_env(env, problems)
    _check_mounts(mounts, volumes, problems)
    return PodSettings(
        resources=dict(resources),
        env=env,
        volumes=volumes,
        volume_mounts=mounts,
        node_selector=dict(node_selector),
        tolerations=_object_list(raw, "tolerations", problems),
        service_account_name=account,
        image_pull_secrets=_object_list(raw, "imagePullSecrets", problems),
    )


def _check_fit(
    models: Sequence[ModelSpec], node_cores: int, budget: int | None, where: str
) -> list[str]:
    problems: list[str] = []
    for model in models:
        if model.cores > node_cores:
            problems.append(
                f"model {model.name!r} needs {model.cores} NeuronCores but {where} "
                f"{node_cores}; compile it for at most {node_cores} cores or choose a larger "
                "instanceType/nodeCores"
            )
        elif budget is not None and model.cores > budget:
            problems.append(
                f"model {model.name!r} needs {model.cores} NeuronCores but spec.cores allows "
                f"{budget} per replica; raise spec.cores to at least {model.cores}"
            )
    return problems


def check_pod_count(spec: WorkloadSpec, pods_per_replica: int) -> None:
    """Refuse layouts with more pods than ``MAX_PODS`` (the planner calls this once it knows)."""
    total = pods_per_replica * spec.replicas
    if total > MAX_PODS:
        raise InvalidSpecError(
            [
                f"the plan needs {total} pods ({pods_per_replica} per replica x {spec.replicas} "
                f"replicas), more than the {MAX_PODS} the operator creates for one "
                "NeuronWorkload; use isolation Shared, fewer copies or fewer replicas"
            ]
        )


def parse_spec(raw: object) -> WorkloadSpec:
    """Validate a raw ``spec`` mapping; raise ``InvalidSpecError`` listing every problem."""
    if not isinstance(raw, Mapping):
        raise InvalidSpecError([f"spec: {raw!r} is not an object; give models, image and a node"])
    problems = _Problems()
    models = _parse_models(raw.get("models"), problems)
    instance_type, node_cores = _parse_node_cores(raw, problems)
    budget = _int_field(raw, "cores", "cores", problems, minimum=1, maximum=MAX_NODE_CORES * 64)
    replicas = _int_field(
        raw, "replicas", "replicas", problems, minimum=0, maximum=MAX_REPLICAS, default=1
    )
    isolation = raw.get("isolation", ISOLATION_SHARED)
    if isolation not in ISOLATIONS:
        problems.add("isolation", isolation, "is not an isolation", "use Shared or Process")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.add("image", image, "is not an image reference", "give the runtime's image")
    pod = _parse_pod_settings(raw, problems)
    if node_cores is not None:
        where = (
            f"a node of type {instance_type} has"
            if instance_type
            else "spec.nodeCores gives a node"
        )
        problems.items.extend(_check_fit(models, node_cores, budget, where))
    if problems.items:
        raise InvalidSpecError(problems.items)
    assert node_cores is not None and replicas is not None and isinstance(image, str)
    return WorkloadSpec(
        models=models,
        node_cores=node_cores,
        image=image,
        cores=budget,
        isolation=str(isolation),
        instance_type=instance_type,
        replicas=replicas,
        pod=pod,
    )


def check_name(name: str) -> None:
    """NeuronWorkload names become Service names and label values: a DNS label of <= 63."""
    if len(name) > MAX_NAME_LENGTH or not _DNS_LABEL.match(name):
        raise InvalidSpecError(
            [
                f"metadata.name: {name!r} is not a DNS label; it names the Service and labels "
                "the pods, so use at most 63 lower-case letters, digits and '-', starting with "
                "a letter"
            ]
        )


def workload_from_object(obj: object, *, default_namespace: str = "default") -> Workload:
    """A ``Workload`` from a NeuronWorkload object (as read from YAML or from the API server)."""
    if not isinstance(obj, Mapping):
        raise InvalidSpecError(
            [
                f"{obj!r} is not a NeuronWorkload object; give a mapping with apiVersion: "
                f"{API_VERSION}, kind: {KIND}, metadata and spec"
            ]
        )
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise InvalidSpecError(
            [
                f"apiVersion/kind {obj.get('apiVersion')!r}/{obj.get('kind')!r} is not a "
                f"NeuronWorkload; give apiVersion: {API_VERSION} and kind: {KIND}"
            ]
        )
    meta = obj.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise InvalidSpecError(
            [f"metadata: {meta!r} is not an object; give metadata.name (and namespace)"]
        )
    name = str(meta.get("name", ""))
    check_name(name)
    return Workload(
        name=name,
        namespace=str(meta.get("namespace") or default_namespace),
        spec=parse_spec(obj.get("spec")),
        uid=meta.get("uid"),
    )
