"""Karpenter's kwok cloud provider as the local cluster's node autoscaler.

Why Karpenter's kwok provider: it is Karpenter's real core (provisioning, bin-packing,
consolidation) with a cloud provider that makes Node objects instead of EC2 instances, so the
local cluster can show that an autoscaler acts on NeuronWorkload pods.  The nodes it makes carry
the annotation ``kwok.x-k8s.io/node: fake``, so the cluster's own kwok keeps them Ready and runs
their pods, like the static kwok nodes.

What lives here: the build (one ``go build`` of ``sigs.k8s.io/karpenter/kwok`` from the module in
``hack/karpenter``, cached by version beside the control plane, with the CRDs copied out of the
same module version), and pure descriptions of what the cluster feeds it: the instance-types file
(Neuron instance types with their real vCPU, memory, NeuronCore and device counts), the
KWOKNodeClass, the NodePool, the process environment, and the status patch that gives a node it
made the full NeuronCore capacity a device plugin would publish.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_cores import CORE_RESOURCE, DEVICE_RESOURCE, INSTANCE_TYPES, lookup_instance_type
from neuron_localcluster.binaries import BinaryError, build_env, find_go, run_go_build
from neuron_localcluster.cache import cache_root, locked
from neuron_localcluster.nodes import INSTANCE_TYPE_LABEL, NEURON_TAINT, ROLE_LABEL

log = logging.getLogger(__name__)

KARPENTER_MODULE = "sigs.k8s.io/karpenter"
KWOK_PROVIDER_PACKAGE = "sigs.k8s.io/karpenter/kwok"
COMPONENT = "karpenter-kwok"
MODULE_ENV = "NEURON_GROUPS_KARPENTER_MODULE"
# The CRDs the provider watches, as folders of the module: Karpenter's own (NodePool, NodeClaim,
# NodeOverlay, CapacityBuffer) and the kwok provider's KWOKNodeClass.
CRD_FOLDERS = ("pkg/apis/crds", "kwok/apis/crds")

AUTOSCALERS = ("none", "karpenter")
NODEPOOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
ZONE_LABEL = "topology.kubernetes.io/zone"
NODECLASS_GROUP = "karpenter.kwok.sh"
NODECLASS_KIND = "KWOKNodeClass"
ZONE = "us-east-1a"
MAX_PODS = 110  # the kubelet's default --max-pods; EKS's VPC CNI computes its own per type

_DURATION = re.compile(r"^(?:[0-9]+(?:s|m|h))+$")


@dataclass(frozen=True)
class Shape:
    """The parts of an EC2 instance type Karpenter packs by besides Neuron: vCPUs, memory, price."""

    vcpus: int
    memory_gib: int
    price: float  # on-demand USD per hour in us-east-1, rounded; Karpenter only ranks by it


# vCPU and memory as AWS publishes them for each Neuron instance type (NeuronCore and device
# counts come from neuron_cores, the one table the operator and device plugin use).
SHAPES: dict[str, Shape] = {
    "inf1.xlarge": Shape(4, 8, 0.228),
    "inf1.2xlarge": Shape(8, 16, 0.362),
    "inf1.6xlarge": Shape(24, 48, 1.18),
    "inf1.24xlarge": Shape(96, 192, 4.721),
    "inf2.xlarge": Shape(4, 16, 0.758),
    "inf2.8xlarge": Shape(32, 128, 1.968),
    "inf2.24xlarge": Shape(96, 384, 6.491),
    "inf2.48xlarge": Shape(192, 768, 12.981),
    "trn1.2xlarge": Shape(8, 32, 1.344),
    "trn1.32xlarge": Shape(128, 512, 21.5),
    "trn1n.32xlarge": Shape(128, 512, 24.78),
    "trn2.48xlarge": Shape(192, 2048, 44.7),
}


class KarpenterError(ValueError):
    """A Karpenter setting or pin is malformed; the message names it and the accepted forms."""


# ---- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How the local cluster runs Karpenter: which instance types, how fast it gives nodes back.

    ``consolidate_after``: how long a node must be empty or under-used before Karpenter removes
    or replaces it (NodePool ``spec.disruption.consolidateAfter``; tests use a few seconds, a
    real cluster minutes).  ``registration_delay``: how long a new node takes to appear
    (KWOKNodeClass ``nodeRegistrationDelay``; stands for an instance's boot).  ``core_limit``:
    the NodePool's NeuronCore limit, the most cores it may have at once.
    """

    instance_types: tuple[str, ...] = tuple(INSTANCE_TYPES)
    consolidate_after: str = "30s"
    registration_delay: str = "0s"
    core_limit: int = 4096
    nodepool: str = "neuron"

    def __post_init__(self) -> None:
        if not self.instance_types:
            raise KarpenterError(
                "no instance types for the NodePool; give at least one of "
                f"{', '.join(INSTANCE_TYPES)}"
            )
        for name in self.instance_types:
            lookup_instance_type(name)  # a clear error naming the known types
            if name not in SHAPES:
                raise KarpenterError(
                    f"instance type {name!r} has no vCPU/memory entry in "
                    "neuron_localcluster.karpenter.SHAPES; add its AWS figures there"
                )
        for field_name in ("consolidate_after", "registration_delay"):
            value = getattr(self, field_name)
            if not _DURATION.match(value):
                raise KarpenterError(
                    f"{field_name}={value!r} is not a Karpenter duration; write digits with "
                    "s, m or h, e.g. '5s', '1m30s', '2h'"
                )
        if self.core_limit < 1:
            raise KarpenterError(
                f"core_limit={self.core_limit} must be a positive NeuronCore count"
            )


def parse_autoscaler(text: str) -> str:
    """``none`` or ``karpenter`` (any case, surrounding space ignored), else a clear error."""
    value = text.strip().lower()
    if value not in AUTOSCALERS:
        raise KarpenterError(
            f"autoscaler {text!r} is not known; use one of {', '.join(AUTOSCALERS)} "
            "(flag --autoscaler or env NEURON_GROUPS_AUTOSCALER)"
        )
    return value


# ---- the module pin and the build ----------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """What hack/karpenter/go.mod pins: the Karpenter release and the Go toolchain it needs."""

    version: str
    toolchain: str


_REQUIRE = re.compile(r"^\s*(?:require\s+)?" + re.escape(KARPENTER_MODULE) + r"\s+(v\S+)")
_TOOLCHAIN = re.compile(r"^\s*toolchain\s+(go\d+\.\d+(?:\.\d+)?)\s*$")


def read_pin(go_mod: str) -> Pin:
    """The Karpenter version (first ``require``) and the ``toolchain`` line of ``go_mod``."""
    version = toolchain = ""
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        if not version and (match := _REQUIRE.match(line)):
            version = match.group(1)
        if match := _TOOLCHAIN.match(line):
            toolchain = match.group(1)
    if not version or not toolchain:
        missing = " and ".join(
            what
            for what, got in (
                (f"`require {KARPENTER_MODULE} vX.Y.Z`", version),
                ("`toolchain goX.Y.Z`", toolchain),
            )
            if not got
        )
        raise BinaryError(
            f"hack/karpenter/go.mod lacks {missing}; it must pin the Karpenter release and the "
            "Go toolchain that builds it (restore it from git)."
        )
    return Pin(version, toolchain)


def module_dir(env: Mapping[str, str]) -> Path:
    """``$NEURON_GROUPS_KARPENTER_MODULE`` or the repo's hack/karpenter."""
    override = env.get(MODULE_ENV)
    path = (
        Path(override) if override else Path(__file__).resolve().parents[1] / "hack" / "karpenter"
    )
    if not (path / "go.mod").is_file():
        raise BinaryError(
            f"no go.mod in {path}; run from a checkout of neuron-groups or set {MODULE_ENV} to "
            "the folder holding hack/karpenter/go.mod."
        )
    return path


@dataclass(frozen=True)
class Assets:
    """The built provider and the CRDs of the same Karpenter release."""

    binary: Path
    crds: tuple[Path, ...]
    version: str


def cache_folder(root: Path, version: str) -> Path:
    return root / f"{COMPONENT}-{version}"


def build_command(go: str, out: Path) -> list[str]:
    return [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), KWOK_PROVIDER_PACKAGE]


def _cached(folder: Path) -> Assets | None:
    binary = folder / COMPONENT
    crds = tuple(sorted((folder / "crds").glob("*.yaml")))
    if os.access(binary, os.X_OK) and crds:
        return Assets(binary, crds, folder.name.removeprefix(f"{COMPONENT}-"))
    return None


def ensure_karpenter(env: Mapping[str, str] | None = None) -> Assets:
    """The kwok provider and its CRDs, built once per Karpenter version (a few minutes)."""
    environ = dict(os.environ) if env is None else dict(env)
    moddir = module_dir(environ)
    pin = read_pin((moddir / "go.mod").read_text())
    root = cache_root(environ)
    folder = cache_folder(root, pin.version)
    found = _cached(folder)
    if found:
        return found
    with locked(root / f".{COMPONENT}.lock"):
        found = _cached(folder)
        if found:
            return found
        _build(environ, moddir, pin, folder)
    built = _cached(folder)
    if built is None:
        raise BinaryError(f"the Karpenter build left no binary or CRDs in {folder}")
    return built


def _build(env: dict[str, str], moddir: Path, pin: Pin, folder: Path) -> None:
    go = find_go(env)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
        staged = Path(tmp) / folder.name
        staged.mkdir()
        run_go_build(
            env,
            build_command(go, staged / COMPONENT),
            moddir=moddir,
            what=f"{KWOK_PROVIDER_PACKAGE}@{pin.version} ({pin.toolchain})",
            toolchain=pin.toolchain,
            remedy=(
                f"Check that the module proxy is reachable: the go command fetches the "
                f"{pin.toolchain} toolchain and {KARPENTER_MODULE}@{pin.version} from it once."
            ),
        )
        source = _module_source(go, env, moddir, pin)
        (staged / "crds").mkdir()
        for sub in CRD_FOLDERS:
            for crd in sorted((source / sub).glob("*.yaml")):
                shutil.copyfile(crd, staged / "crds" / crd.name)
        if not any((staged / "crds").iterdir()):
            raise BinaryError(f"no CRDs under {', '.join(CRD_FOLDERS)} in {source}")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)


def _module_source(go: str, env: Mapping[str, str], moddir: Path, pin: Pin) -> Path:
    """The folder of ``sigs.k8s.io/karpenter@<version>`` in the module cache."""
    proc = subprocess.run(
        [go, "list", "-m", "-json", KARPENTER_MODULE],
        cwd=moddir,
        env=build_env(env, pin.toolchain),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BinaryError(
            f"`go list -m {KARPENTER_MODULE}` failed in {moddir}: {proc.stderr.strip()[-500:]}"
        )
    info = json.loads(proc.stdout)
    if info.get("Version") != pin.version or not info.get("Dir"):
        raise BinaryError(
            f"the module cache holds {KARPENTER_MODULE} {info.get('Version')!r}, not "
            f"{pin.version}; run `go mod download` in {moddir}"
        )
    return Path(info["Dir"])


# ---- what the cluster feeds Karpenter ------------------------------------------------------


def neuron_resources(instance_type: str) -> dict[str, str]:
    """Everything a node of ``instance_type`` offers: CPU, memory, pods and its Neuron hardware."""
    itype = lookup_instance_type(instance_type)
    shape = SHAPES[itype.name]
    return {
        "cpu": str(shape.vcpus),
        "memory": f"{shape.memory_gib}Gi",
        "pods": str(MAX_PODS),
        CORE_RESOURCE: str(itype.cores),
        DEVICE_RESOURCE: str(itype.devices),
    }


def instance_types_file(settings: Settings) -> list[dict[str, Any]]:
    """The provider's ``--instance-types-file-path`` document: one on-demand offering each."""
    return [
        {
            "name": name,
            "architecture": "amd64",
            "operatingSystems": ["linux"],
            "resources": neuron_resources(name),
            "offerings": [
                {
                    "Price": SHAPES[name].price,
                    "Available": True,
                    "Requirements": [
                        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": ["on-demand"]},
                        {"key": ZONE_LABEL, "operator": "In", "values": [ZONE]},
                    ],
                }
            ],
        }
        for name in settings.instance_types
    ]


def nodeclass_manifest(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": f"{NODECLASS_GROUP}/v1alpha1",
        "kind": NODECLASS_KIND,
        "metadata": {"name": settings.nodepool},
        "spec": {"nodeRegistrationDelay": settings.registration_delay},
    }


def nodepool_manifest(settings: Settings) -> dict[str, Any]:
    """A NodePool for Neuron capacity, shaped like the chart's EKS one: taint, limit, consolidation.

    Its nodes carry the EKS instance-type label (Karpenter sets it), the
    ``aws.amazon.com/neuron:NoSchedule`` taint from the template, and ``neuron-groups.io/simulation:
    kwok`` like the static kwok nodes, because the cluster's kwok runs their pods.
    """
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": settings.nodepool},
        "spec": {
            "template": {
                "metadata": {"labels": {ROLE_LABEL: "kwok"}},
                "spec": {
                    "nodeClassRef": {
                        "group": NODECLASS_GROUP,
                        "kind": NODECLASS_KIND,
                        "name": settings.nodepool,
                    },
                    "requirements": [
                        {
                            "key": INSTANCE_TYPE_LABEL,
                            "operator": "In",
                            "values": list(settings.instance_types),
                        },
                        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": ["on-demand"]},
                    ],
                    "taints": [dict(NEURON_TAINT)],
                    "expireAfter": "Never",
                },
            },
            "disruption": {
                "consolidationPolicy": "WhenEmptyOrUnderutilized",
                "consolidateAfter": settings.consolidate_after,
                "budgets": [{"nodes": "100%"}],
            },
            "limits": {CORE_RESOURCE: str(settings.core_limit)},
        },
    }


def process_env(
    base: Mapping[str, str],
    *,
    kubeconfig: Path,
    instance_types_path: Path,
    metrics_port: int,
    health_port: int,
) -> dict[str, str]:
    """The provider's environment: one replica (no leader election), ports picked free.

    Karpenter binds its metrics and health listeners to ``:PORT`` (every address; no flag moves
    them to loopback), so both ports are ones the kernel called free on 127.0.0.1 a moment ago.
    """
    keep = {k: base[k] for k in ("PATH", "HOME", "TMPDIR", "LANG") if k in base}
    return {
        **keep,
        "KUBECONFIG": str(kubeconfig),
        "INSTANCE_TYPES_FILE_PATH": str(instance_types_path),
        "SYSTEM_NAMESPACE": "kube-system",
        "DISABLE_LEADER_ELECTION": "true",
        "METRICS_PORT": str(metrics_port),
        "HEALTH_PROBE_PORT": str(health_port),
        "LOG_LEVEL": base.get("NEURON_GROUPS_KARPENTER_LOG_LEVEL", "info"),
    }


def nodes_lower_bound(cores: int, instance_type: str) -> int:
    """The fewest nodes of ``instance_type`` that hold ``cores`` NeuronCores."""
    return math.ceil(cores / lookup_instance_type(instance_type).cores)


# ---- the capacity publisher: a device plugin's stand-in for the nodes Karpenter makes ---------


def capacity_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status patch that gives a Karpenter-made kwok node a real Neuron node's capacity.

    A real node's kubelet reports capacity from the hardware and the device plugin adds one
    ``aws.amazon.com/neuroncore`` per core; the kwok provider instead sets capacity to what the
    pods it was made for requested (16 cores' worth of pods: 16; four: 4).  Capacity and the
    Neuron entries of allocatable become the instance type's full counts, as on the static kwok
    nodes.  ``None`` when the node is not such a node or is already right.
    """
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    if NODEPOOL_LABEL not in labels:
        return None
    itype = INSTANCE_TYPES.get(str(labels.get(INSTANCE_TYPE_LABEL, "")))
    if itype is None or itype.name not in SHAPES:
        return None
    status = node.get("status") or {}
    capacity = dict(status.get("capacity") or {})
    allocatable = dict(status.get("allocatable") or {})
    full = neuron_resources(itype.name)
    neuron = {k: full[k] for k in (CORE_RESOURCE, DEVICE_RESOURCE)}
    want_capacity = {**capacity, **full}
    want_allocatable = {**allocatable, **neuron}
    if want_capacity == capacity and want_allocatable == allocatable:
        return None
    return {"status": {"capacity": want_capacity, "allocatable": want_allocatable}}
