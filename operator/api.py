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

from neuron_cores import GROUP_SIZES_ENV, INSTANCE_TYPES, MODELS_ENV, lookup_instance_type

GROUP = "neurongroups.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NeuronWorkload"
PLURAL = "neuronworkloads"
SHORT_NAME = "nwl"

ISOLATION_SHARED = "Shared"
ISOLATION_PROCESS = "Process"
ISOLATIONS = (ISOLATION_SHARED, ISOLATION_PROCESS)

# spec.allocation: how each pod gets its NeuronCores.  DevicePlugin: an aws.amazon.com/neuroncore
# request, cores chosen by the device plugin.  DRA: a ResourceClaim for one contiguous block from
# the DRA driver, made from a ResourceClaimTemplate the workload owns.  Auto (the default): DRA
# when the cluster has the driver's block DeviceClass, else the device plugin.
ALLOCATION_DEVICE_PLUGIN = "DevicePlugin"
ALLOCATION_DRA = "DRA"
ALLOCATION_AUTO = "Auto"
ALLOCATIONS = (ALLOCATION_DEVICE_PLUGIN, ALLOCATION_DRA, ALLOCATION_AUTO)

# Two more planned values, set only in pods of a spec.container (so an image's own flags can take
# them through Kubernetes' $(VAR) expansion): each model of the pod once, in load order, and the
# pod's NeuronCore count.
MODEL_NAMES_ENV = "NEURON_MODEL_NAMES"
POD_CORES_ENV = "NEURON_POD_CORES"
RESERVED_ENV = (GROUP_SIZES_ENV, MODELS_ENV, MODEL_NAMES_ENV, POD_CORES_ENV)

# Bounds shared with the CRD schema (tests check that the two agree).
MAX_MODELS = 64
MAX_COPIES = 4096
MAX_REPLICAS = 1000
MAX_NODE_CORES = 1024
MAX_NAME_LENGTH = 63
MAX_MODEL_PATH = 1024
# The operator refuses layouts that would create more pods than this for one NeuronWorkload:
# a typo such as ``copies: 100000`` with ``Process`` should not flood the API server.
MAX_PODS = 2000
# A pod's NEURON_MODELS lists every model copy it serves as ``name=path`` and one separator
# (``neuron_cores.encode_models``); with every copy in one pod (a small spec.cores budget does that)
# it holds at most sum(copies x (len(name) + len(path) + 2)) characters.  The CRD and
# ``parse_spec`` bound that sum, and the user's env, so that a planned pod stays far below the API
# server's 3 MiB request limit and etcd's 1.5 MiB object limit.  Names and paths are printable
# ASCII without quotes or backslashes, so a character is one byte, in JSON too.  So is the
# separator the encoder picks when a path holds a comma, unless the paths together hold every
# other printable punctuation character: then it is '"', two bytes in JSON, at most 1.25 MiB.
MAX_PLAN_TEXT = 1024 * 1024
MAX_ENV_TEXT = 64 * 1024

# Volume sources the CRD knows.  Which of them a NeuronWorkload may use is the operator's
# ``VolumePolicy`` (its --allowed-volume-types and --allowed-host-paths flags) and the chart's
# ValidatingAdmissionPolicy; see docs/security.md.
HOST_PATH = "hostPath"
VOLUME_TYPES = (
    "emptyDir",
    "configMap",
    "secret",
    "persistentVolumeClaim",
    "image",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
    HOST_PATH,
)
DEFAULT_VOLUME_TYPES = VOLUME_TYPES[:7]
# Projected volumes may combine these; never serviceAccountToken (an API credential) or others.
PROJECTED_SOURCES = ("configMap", "secret", "downwardAPI")
ENV_KEYS = ("name", "value", "valueFrom")
ENV_SOURCES = ("configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef")
MOUNT_KEYS = (
    "name",
    "mountPath",
    "readOnly",
    "subPath",
    "subPathExpr",
    "mountPropagation",
    "recursiveReadOnly",
)
MOUNT_PROPAGATIONS = ("None", "HostToContainer")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")

# spec.container: what a NeuronWorkload may set of its serving container (docs/security.md).  No
# securityContext, hostPort, lifecycle hook or image: the operator's pod keeps those.
CONTAINER_KEYS = (
    "command",
    "args",
    "modelArgs",
    "workingDir",
    "ports",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
)
PORT_KEYS = ("name", "containerPort", "protocol")
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc", "exec")
PROBE_TIMINGS = (
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
)
# No "host": a probe reaches only its own pod.
PROBE_HANDLER_KEYS = {
    "httpGet": ("path", "port", "scheme", "httpHeaders"),
    "tcpSocket": ("port",),
    "grpc": ("port", "service"),
    "exec": ("command",),
}
HTTP_SCHEMES = ("HTTP", "HTTPS")
# Placeholders of spec.container.modelArgs, expanded once per model of the pod.
MODEL_ARG_FIELDS = ("name", "path", "cores", "copies")
MAX_ARGS = 128
MAX_ARG_LENGTH = 4096
# Smaller for modelArgs: the CRD's placeholder rule must stay inside the API server's CEL budget.
MAX_MODEL_ARGS = 16
MAX_MODEL_ARG_LENGTH = 512
MAX_PORTS = 16
DEFAULT_PORT = "http"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VOLUME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Printable ASCII but '"' and backslash (JSON escapes them: two bytes for one character).
_MODEL_PATH = re.compile(r"^/[ !#-\[\]-~]*$")
_PARENT = re.compile(r"(^|/)\.\.(/|$)")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class VolumePolicy:
    """Which volume sources a NeuronWorkload's pods may use.

    ``host_paths``: host folders a ``hostPath`` volume may name, each allowing itself and what is
    below it (whole path components: ``/srv/models`` allows ``/srv/models/a``, not
    ``/srv/models-b``); empty refuses ``hostPath``.  Mounts of a hostPath volume must be read-only.
    """

    types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    host_paths: tuple[str, ...] = ()

    def allowed(self) -> tuple[str, ...]:
        return (*self.types, HOST_PATH) if self.host_paths else self.types

    def host_path_allowed(self, path: str) -> bool:
        under = path.rstrip("/") + "/"
        return not _PARENT.search(path) and any(
            under.startswith(prefix.rstrip("/") + "/") for prefix in self.host_paths
        )


DEFAULT_VOLUME_POLICY = VolumePolicy()
_configured_policy = [DEFAULT_VOLUME_POLICY]


def configure_volume_policy(policy: VolumePolicy) -> None:
    """Set the policy ``parse_spec`` applies when given none (``neuron-operator run`` does)."""
    _configured_policy[0] = policy


def parse_volume_types(text: str) -> tuple[str, ...]:
    """The --allowed-volume-types value: comma-separated names from VOLUME_TYPES but hostPath."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    offered = [t for t in VOLUME_TYPES if t != HOST_PATH]
    bad = [n for n in names if n not in offered]
    if bad:
        hint = "; allow hostPath with --allowed-host-paths" if HOST_PATH in bad else ""
        raise ValueError(
            f"{', '.join(map(repr, bad))} is not a volume type NeuronWorkloads can be allowed; "
            f"give a comma-separated list of {', '.join(offered)}{hint}"
        )
    return names


def parse_host_paths(text: str) -> tuple[str, ...]:
    """The --allowed-host-paths value: comma-separated absolute folders without '..'."""
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in paths if not p.startswith("/") or _PARENT.search(p)]
    if bad:
        raise ValueError(
            f"{', '.join(map(repr, bad))} is not an absolute host folder without '..'; give "
            "comma-separated folders such as /srv/models, or nothing to refuse hostPath"
        )
    return paths


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
class ContainerSettings:
    """spec.container: the serving container's command, args, ports and probes.

    ``None`` in ``command``/``ports`` and a probe absent from ``probes`` mean the default
    (``neuron-runtime serve``, ports http 8000 and grpc 8001, the runtime's health probes).
    """

    command: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    model_args: tuple[str, ...] = ()
    working_dir: str | None = None
    ports: tuple[Mapping[str, Any], ...] | None = None
    probes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def expand_model_arg(template: str, values: Mapping[str, object]) -> str:
    """``template`` with each ``{name}``-style placeholder replaced (names: MODEL_ARG_FIELDS)."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


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
    container: ContainerSettings | None = None
    allocation: str = ALLOCATION_AUTO

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
    if not isinstance(model_path, str) or not _MODEL_PATH.match(model_path):
        problems.add(
            f"{path}.path",
            model_path,
            "is not an absolute path in printable ASCII without '\"' or '\\'",
            "give the compiled model's directory inside the container, e.g. /models/resnet50",
        )
        model_path = None
    elif len(model_path) > MAX_MODEL_PATH:
        problems.add(
            f"{path}.path",
            f"{model_path[:40]}...",
            f"is longer than {MAX_MODEL_PATH} characters",
            "give a shorter directory",
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
    text = plan_text_size(models)
    if text > MAX_PLAN_TEXT:
        problems.add(
            "models",
            f"{sum(m.copies for m in models)} copies",
            f"need up to {text} characters of {MODELS_ENV} in one pod, more than "
            f"{MAX_PLAN_TEXT} (the pod must stay under the API server's request limit)",
            "serve fewer copies, or shorter model names and paths",
        )
    return tuple(models)


def plan_text_size(models: Sequence[ModelSpec]) -> int:
    """The most characters NEURON_MODELS can hold in one pod: every copy as ``name=path,``."""
    return sum(m.copies * (len(m.name) + len(m.path) + 2) for m in models)


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


def _unknown_keys(
    item: Mapping[str, Any], path: str, known: Sequence[str], problems: _Problems
) -> None:
    for key in item:
        if key not in known:
            problems.add(
                f"{path}.{key}",
                item[key],
                "is not a field NeuronWorkloads pass to pods",
                f"remove it; the fields are {', '.join(known)}",
            )


def _check_env(env: Sequence[Mapping[str, Any]], problems: _Problems) -> None:
    text = 0
    for index, item in enumerate(env):
        path = f"env[{index}]"
        _unknown_keys(item, path, ENV_KEYS, problems)
        name = item.get("name")
        if name in RESERVED_ENV:
            problems.add(
                f"{path}.name",
                name,
                "is set by the operator from the plan",
                "remove it: describe the layout with spec.models, spec.cores and spec.isolation",
            )
        elif not isinstance(name, str) or not name:
            problems.add(f"{path}.name", name, "is not a name", "give every env entry a name")
        value, source = item.get("value"), item.get("valueFrom")
        if value is not None and not isinstance(value, str):
            problems.add(
                f"{path}.value", value, "is not a string", f"quote it, e.g. value: '{value}'"
            )
        if source is not None and (
            not isinstance(source, Mapping)
            or len(source) != 1
            or next(iter(source)) not in ENV_SOURCES
        ):
            problems.add(
                f"{path}.valueFrom",
                source,
                "is not one env source",
                f"give exactly one of {', '.join(ENV_SOURCES)}",
            )
        if value is not None and source is not None:
            problems.add(path, name, "has both value and valueFrom", "give one of them")
        text += len(str(name)) + (len(value) if isinstance(value, str) else 0)
    if text > MAX_ENV_TEXT:
        problems.add(
            "env",
            f"{text} characters",
            f"is more than the {MAX_ENV_TEXT} characters of names and values a pod may carry",
            "move large settings into a ConfigMap volume",
        )


def _volume_type(volume: Mapping[str, Any]) -> str | None:
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if len(kinds) == 1 else None


def _check_volumes(
    volumes: Sequence[Mapping[str, Any]], policy: VolumePolicy, problems: _Problems
) -> None:
    allowed = policy.allowed()
    seen: set[str] = set()
    for index, volume in enumerate(volumes):
        path = f"volumes[{index}]"
        name = volume.get("name")
        if not isinstance(name, str) or not _VOLUME_NAME.match(name) or len(name) > 63:
            problems.add(f"{path}.name", name, "is not a DNS label", "name the volume, e.g. models")
        elif name in seen:
            problems.add(f"{path}.name", name, "is a volume name used twice", "rename one")
        seen.add(str(name))
        kind = _volume_type(volume)
        if kind is None:
            problems.add(
                path,
                sorted(k for k in volume if k != "name"),
                f"is not exactly one volume source (volume {name!r})",
                f"give one of {', '.join(allowed)}",
            )
            continue
        if kind not in allowed:
            hint = (
                "; hostPath needs the operator's --allowed-host-paths (chart value "
                "workloadPolicy.allowedHostPaths)"
                if kind == HOST_PATH
                else ""
            )
            problems.add(
                f"{path}.{kind}",
                name,
                f"uses volume type {kind}, which NeuronWorkloads may not use here",
                f"use one of {', '.join(allowed)}{hint}",
            )
            continue
        source = volume[kind]
        if kind == HOST_PATH:
            host = source.get("path") if isinstance(source, Mapping) else None
            if not isinstance(host, str) or not policy.host_path_allowed(host):
                problems.add(
                    f"{path}.hostPath.path",
                    host,
                    f"is not under a host folder NeuronWorkloads may mount (volume {name!r})",
                    f"use a folder under {', '.join(policy.host_paths)} without '..'",
                )
        elif kind == "projected":
            _check_projected(source, path, name, problems)


def _check_projected(source: object, path: str, name: object, problems: _Problems) -> None:
    sources = source.get("sources") if isinstance(source, Mapping) else None
    for index, item in enumerate(sources if isinstance(sources, list) else [None]):
        kinds = list(item) if isinstance(item, Mapping) else []
        if len(kinds) != 1 or kinds[0] not in PROJECTED_SOURCES:
            problems.add(
                f"{path}.projected.sources[{index}]",
                kinds or item,
                f"is not one allowed projected source (volume {name!r})",
                f"use one of {', '.join(PROJECTED_SOURCES)}; pods of a NeuronWorkload get no "
                "service account token",
            )


def _check_mounts(
    mounts: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]], problems: _Problems
) -> None:
    names = [v.get("name") for v in volumes]
    host = {v.get("name") for v in volumes if _volume_type(v) == HOST_PATH}
    for index, mount in enumerate(mounts):
        path = f"volumeMounts[{index}]"
        _unknown_keys(mount, path, MOUNT_KEYS, problems)
        name = mount.get("name")
        if not isinstance(name, str) or name not in names:
            problems.add(
                f"{path}.name",
                name,
                "names no volume in spec.volumes",
                "add the volume to spec.volumes or fix the name",
            )
        elif name in host and mount.get("readOnly") is not True:
            problems.add(
                f"{path}.readOnly",
                mount.get("readOnly"),
                f"is not true for hostPath volume {name!r}",
                "mount host folders with readOnly: true",
            )
        mount_path = mount.get("mountPath")
        if not isinstance(mount_path, str) or not mount_path.startswith("/"):
            problems.add(f"{path}.mountPath", mount_path, "is not absolute", "e.g. /models")
        propagation = mount.get("mountPropagation")
        if propagation is not None and propagation not in MOUNT_PROPAGATIONS:
            problems.add(
                f"{path}.mountPropagation",
                propagation,
                "is not allowed",
                f"use {' or '.join(MOUNT_PROPAGATIONS)}",
            )


def _check_tolerations(tolerations: Sequence[Mapping[str, Any]], problems: _Problems) -> None:
    for index, item in enumerate(tolerations):
        path = f"tolerations[{index}]"
        _unknown_keys(item, path, TOLERATION_KEYS, problems)
        for key in ("key", "value"):
            if item.get(key) is not None and not isinstance(item[key], str):
                problems.add(f"{path}.{key}", item[key], "is not a string", "quote it")
        checks = (
            ("operator", TOLERATION_OPERATORS),
            ("effect", TOLERATION_EFFECTS),
        )
        for key, choices in checks:
            if item.get(key) is not None and item[key] not in choices:
                problems.add(f"{path}.{key}", item[key], "is not allowed", f"use one of {choices}")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            problems.add(f"{path}.tolerationSeconds", seconds, "is not an integer", "e.g. 300")


def _parse_pod_settings(
    raw: Mapping[str, Any], policy: VolumePolicy, problems: _Problems
) -> PodSettings:
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
    tolerations = _object_list(raw, "tolerations", problems)
    _check_env(env, problems)
    _check_volumes(volumes, policy, problems)
    _check_mounts(mounts, volumes, problems)
    _check_tolerations(tolerations, problems)
    return PodSettings(
        resources=dict(resources),
        env=env,
        volumes=volumes,
        volume_mounts=mounts,
        node_selector=dict(node_selector),
        tolerations=tolerations,
        service_account_name=account,
        image_pull_secrets=_object_list(raw, "imagePullSecrets", problems),
    )


def _string_list(
    raw: Mapping[str, Any],
    key: str,
    problems: _Problems,
    *,
    what: str,
    most: int = MAX_ARGS,
    longest: int = MAX_ARG_LENGTH,
) -> tuple[str, ...] | None:
    path = f"container.{key}"
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(path, value, "is not a list of strings", f"give {what}, each quoted")
        return None
    if len(value) > most or any(len(v) > longest for v in value):
        problems.add(
            path,
            f"{len(value)} items",
            f"is more than {most} items or has one over {longest} characters",
            "move long settings into a ConfigMap volume and pass its path",
        )
        return None
    return tuple(value)


def _check_model_args(templates: Sequence[str], problems: _Problems) -> None:
    for index, template in enumerate(templates):
        unknown = [p for p in _PLACEHOLDER.findall(template) if p not in MODEL_ARG_FIELDS]
        if unknown:
            problems.add(
                f"container.modelArgs[{index}]",
                template,
                f"has the unknown placeholder {{{unknown[0]}}}",
                "use {" + "}, {".join(MODEL_ARG_FIELDS) + "} (each replaced per model of the pod)",
            )


def _parse_ports(raw: object, problems: _Problems) -> tuple[Mapping[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(p, Mapping) for p in raw):
        problems.add(
            "container.ports", raw, "is not a non-empty list of ports", "give name and port"
        )
        return None
    if len(raw) > MAX_PORTS:
        problems.add("container.ports", len(raw), "is too many ports", f"give at most {MAX_PORTS}")
        return None
    names: set[str] = set()
    for index, port in enumerate(raw):
        path = f"container.ports[{index}]"
        _unknown_keys(port, path, PORT_KEYS, problems)
        name = port.get("name")
        if not isinstance(name, str) or not _port_name_ok(name):
            problems.add(
                f"{path}.name",
                name,
                "is not a port name",
                "use 1-15 lower-case letters, digits and '-' with a letter (the Service uses it)",
            )
        elif name in names:
            problems.add(f"{path}.name", name, "is a port name used twice", "rename one")
        names.add(str(name))
        number = port.get("containerPort")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            problems.add(f"{path}.containerPort", number, "is not a port", "give 1 to 65535")
        protocol = port.get("protocol", "TCP")
        if protocol not in PORT_PROTOCOLS:
            problems.add(f"{path}.protocol", protocol, "is not allowed", f"use {PORT_PROTOCOLS}")
    return tuple(raw)


def _port_name_ok(name: str) -> bool:
    return len(name) <= 15 and bool(_PORT_NAME.match(name)) and any(c.isalpha() for c in name)


def _check_probe(
    name: str, probe: object, port_names: Sequence[str], problems: _Problems
) -> Mapping[str, Any] | None:
    path = f"container.{name}"
    if not isinstance(probe, Mapping):
        problems.add(path, probe, "is not a probe", "give one of " + ", ".join(PROBE_HANDLERS))
        return None
    _unknown_keys(probe, path, (*PROBE_HANDLERS, *PROBE_TIMINGS), problems)
    handlers = [h for h in PROBE_HANDLERS if h in probe]
    if len(handlers) != 1:
        problems.add(
            path, handlers, "is not exactly one handler", f"give one of {', '.join(PROBE_HANDLERS)}"
        )
        return None
    for key in PROBE_TIMINGS:
        value = probe.get(key)
        low = 0 if key == "initialDelaySeconds" else 1
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 3600
        ):
            problems.add(f"{path}.{key}", value, "is out of range", f"give {low} to 3600")
    handler = handlers[0]
    body = probe[handler]
    where = f"{path}.{handler}"
    if not isinstance(body, Mapping):
        problems.add(where, body, "is not an object", "see a Pod's probe")
        return None
    _unknown_keys(body, where, PROBE_HANDLER_KEYS[handler], problems)
    if handler == "exec":
        command = body.get("command")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            problems.add(f"{where}.command", command, "is not a command", "give a list of strings")
        return probe
    port = body.get("port")
    if isinstance(port, str):
        if port not in port_names:
            problems.add(
                f"{where}.port",
                port,
                "names no port of the container",
                f"use one of {', '.join(port_names) or 'the ports'} or a number",
            )
    elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.add(f"{where}.port", port, "is not a port", "give a port name or 1 to 65535")
    if handler == "httpGet":
        scheme = body.get("scheme", "HTTP")
        if scheme not in HTTP_SCHEMES:
            problems.add(f"{where}.scheme", scheme, "is not allowed", "use HTTP or HTTPS")
        request_path = body.get("path", "/")
        if not isinstance(request_path, str) or not request_path.startswith("/"):
            problems.add(f"{where}.path", request_path, "is not a path", "e.g. /v2/health/ready")
        headers = body.get("httpHeaders", [])
        if not isinstance(headers, list) or not all(
            isinstance(h, Mapping)
            and set(h) == {"name", "value"}
            and all(isinstance(v, str) for v in h.values())
            for h in headers
        ):
            problems.add(
                f"{where}.httpHeaders", headers, "is not a header list", "give name and value"
            )
    return probe


def _parse_container(raw: object, problems: _Problems) -> ContainerSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.add("container", raw, "is not an object", "give command, args, ports or probes")
        return None
    _unknown_keys(raw, "container", CONTAINER_KEYS, problems)
    command = _string_list(raw, "command", problems, what="the program and its arguments")
    if command == ():
        problems.add("container.command", [], "is empty", "omit it for neuron-runtime serve")
    args = _string_list(raw, "args", problems, what="the arguments") or ()
    model_args = (
        _string_list(
            raw,
            "modelArgs",
            problems,
            what="argument templates",
            most=MAX_MODEL_ARGS,
            longest=MAX_MODEL_ARG_LENGTH,
        )
        or ()
    )
    _check_model_args(model_args, problems)
    working_dir = raw.get("workingDir")
    if working_dir is not None and (
        not isinstance(working_dir, str) or not working_dir.startswith("/")
    ):
        problems.add("container.workingDir", working_dir, "is not absolute", "e.g. /srv")
        working_dir = None
    ports = _parse_ports(raw.get("ports"), problems)
    port_names = [str(p.get("name")) for p in (ports or ({"name": "http"}, {"name": "grpc"}))]
    probes: dict[str, Mapping[str, Any]] = {}
    for name in PROBES:
        if raw.get(name) is not None:
            checked = _check_probe(name, raw[name], port_names, problems)
            if checked is not None:
                probes[name] = checked
        elif name != "startupProbe" and DEFAULT_PORT not in port_names:
            problems.add(
                f"container.{name}",
                None,
                f"is absent, and the default probe needs a port named {DEFAULT_PORT!r}",
                f"give {name} for your image, or name its HTTP port {DEFAULT_PORT!r} if it "
                "answers /v2/health/ready and /v2/health/live",
            )
    return ContainerSettings(
        command=command or None,
        args=args,
        model_args=model_args,
        working_dir=working_dir,
        ports=ports,
        probes=probes,
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


def parse_spec(raw: object, policy: VolumePolicy | None = None) -> WorkloadSpec:
    """Validate a raw ``spec`` mapping; raise ``InvalidSpecError`` listing every problem.

    ``policy``: the volumes the pods may use; absent, the one ``configure_volume_policy`` set.
    """
    if policy is None:
        policy = _configured_policy[0]
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
    allocation = raw.get("allocation", ALLOCATION_AUTO)
    if allocation not in ALLOCATIONS:
        problems.add(
            "allocation",
            allocation,
            "is not an allocation mode",
            f"use {', '.join(ALLOCATIONS)} (Auto, the default, uses DRA where the cluster has "
            "the neuroncores.neurongroups.dev DeviceClass, else the device plugin)",
        )
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.add("image", image, "is not an image reference", "give the runtime's image")
    pod = _parse_pod_settings(raw, policy, problems)
    container = _parse_container(raw.get("container"), problems)
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
        container=container,
        allocation=str(allocation),
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


def workload_from_object(
    obj: object, *, default_namespace: str = "default", policy: VolumePolicy | None = None
) -> Workload:
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
        spec=parse_spec(obj.get("spec"), policy),
        uid=meta.get("uid"),
    )
