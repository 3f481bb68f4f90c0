"""The kubelet side's logic: from an allocated ResourceClaim to a CDI spec, and the checkpoint.

``plan_claim`` is pure: it checks that the claim the kubelet names is the one the API server has
(same uid), that it is allocated, that its devices of this driver are blocks of this node's pool,
and turns them into one CDI device per request of the claim:

* ``NEURON_RT_VISIBLE_CORES`` set to the request's cores in the range form (``4-7``; a comma list
  only when a request holds several blocks that are not adjacent, as the extended-resource class
  can give);
* the ``/dev/neuronN`` nodes of every Neuron device those cores are on.

:class:`Checkpoint` keeps every prepared claim in one JSON file, replaced atomically on each
change, so a restarted plugin answers a repeated NodePrepareResources from it (without the API
server) and can still unprepare claims prepared before the restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neuron_cores import VISIBLE_CORES_ENV, format_core_list
from neuron_device_plugin.topology import Topology
from neuron_dra_driver.layout import DRIVER_NAME, Block, NodeShape

CDI_VERSION = "0.6.0"
CDI_KIND = "neurongroups.dev/neuroncores"
CHECKPOINT_VERSION = 1


class PrepareError(ValueError):
    """A claim this plugin must not prepare; the message says why and what to check."""


class CheckpointError(RuntimeError):
    """The checkpoint file cannot be read; the message names it."""


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


@dataclass(frozen=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True)
class PreparedClaim:
    claim: ClaimRef
    devices: tuple[PreparedDevice, ...]
    cores: tuple[int, ...]
    cdi_spec: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedClaim:
        return cls(
            claim=ClaimRef(**data["claim"]),
            devices=tuple(
                PreparedDevice(
                    d["request"], d["pool"], d["device"], tuple(str(i) for i in d["cdi_ids"])
                )
                for d in data["devices"]
            ),
            cores=tuple(int(c) for c in data["cores"]),
            cdi_spec=dict(data["cdi_spec"]),
        )


def parse_block(name: str, shape: NodeShape) -> Block | None:
    """The block a device name (``core-3``, ``cores-4-7``) stands for, if the node has it."""
    parts = name.split("-")
    try:
        if len(parts) == 2 and parts[0] == "core":
            first = last = int(parts[1])
        elif len(parts) == 3 and parts[0] == "cores":
            first, last = int(parts[1]), int(parts[2])
        else:
            return None
    except ValueError:
        return None
    block = Block(first, last - first + 1)
    if first < 0 or block.size < 1 or last >= shape.cores or block.name != name:
        return None
    return block


def cdi_device_name(claim_uid: str, request: str) -> str:
    return f"{claim_uid}-{request.replace('/', '-')}"


def plan_claim(
    ref: ClaimRef, claim: Mapping[str, Any], *, node: str, shape: NodeShape, topology: Topology
) -> PreparedClaim:
    """What preparing ``claim`` (the API server's object) means on this node; pure."""
    metadata = claim.get("metadata", {})
    if metadata.get("uid") != ref.uid:
        raise PrepareError(
            f"claim {ref}: the API server's claim of that name has uid {metadata.get('uid')!r}; "
            "it was deleted and created again, so this pod's claim no longer exists"
        )
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise PrepareError(f"claim {ref} is not allocated; the scheduler allocates it first")
    results = allocation.get("devices", {}).get("results", [])
    ours = [r for r in results if r.get("driver") == DRIVER_NAME]
    if not ours:
        drivers = sorted({str(r.get("driver")) for r in results}) or ["none"]
        raise PrepareError(
            f"claim {ref} has no device of driver {DRIVER_NAME} (its devices are from: "
            f"{', '.join(drivers)}); the kubelet should not have asked this driver"
        )
    by_request: dict[str, list[Block]] = {}
    for result in ours:
        pool, device = result.get("pool"), str(result.get("device"))
        if pool != node:
            raise PrepareError(
                f"claim {ref}: device {device} is in pool {pool!r}, not this node's pool {node!r}"
            )
        block = parse_block(device, shape)
        if block is None:
            raise PrepareError(
                f"claim {ref}: device {device!r} is not a block this node publishes "
                f"(core-N or cores-A-B within 0-{shape.cores - 1})"
            )
        by_request.setdefault(str(result.get("request", "")), []).append(block)
    devices: list[PreparedDevice] = []
    cdi_devices: list[dict[str, Any]] = []
    all_cores: set[int] = set()
    for request, blocks in by_request.items():
        cores = sorted({c for block in blocks for c in block.cores})
        if len(cores) != sum(block.size for block in blocks):
            raise PrepareError(f"claim {ref}: request {request!r} holds overlapping blocks")
        all_cores.update(cores)
        name = cdi_device_name(ref.uid, request)
        cdi_devices.append(
            {
                "name": name,
                "containerEdits": {
                    "env": [f"{VISIBLE_CORES_ENV}={format_core_list(cores)}"],
                    "deviceNodes": [
                        {"path": path} for path in _device_paths(cores, shape, topology)
                    ],
                },
            }
        )
        for index, block in enumerate(blocks):
            ids = (f"{CDI_KIND}={name}",) if index == 0 else ()
            devices.append(PreparedDevice(request, node, block.name, ids))
    spec = {"cdiVersion": CDI_VERSION, "kind": CDI_KIND, "devices": cdi_devices}
    return PreparedClaim(ref, tuple(devices), tuple(sorted(all_cores)), spec)


def _device_paths(cores: Sequence[int], shape: NodeShape, topology: Topology) -> list[str]:
    indexes = sorted({shape.device_of(c) for c in cores})
    return [topology.device(i).host_path for i in indexes]


def cdi_spec_path(cdi_dir: Path, claim_uid: str) -> Path:
    """One spec file per claim: ``<vendor>-<class>_<uid>.json``."""
    return cdi_dir / f"{CDI_KIND.replace('/', '-')}_{claim_uid}.json"


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoint:
    """Prepared claims by uid, in one JSON file replaced atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claims: dict[str, PreparedClaim] = {}
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        except OSError as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
        try:
            data = json.loads(text)
            if data.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {CHECKPOINT_VERSION}")
            for uid, item in data["claims"].items():
                self.claims[uid] = PreparedClaim.from_json(item)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint {path} is not a valid checkpoint ({err}); the prepared claims it "
                "held are unknown. Move it aside and restart: claims of running pods are "
                "prepared again when the kubelet asks"
            ) from None

    def get(self, uid: str) -> PreparedClaim | None:
        return self.claims.get(uid)

    def put(self, prepared: PreparedClaim) -> None:
        before = dict(self.claims)
        self.claims[prepared.claim.uid] = prepared
        self._save_or_restore(before)

    def remove(self, uid: str) -> None:
        before = dict(self.claims)
        if self.claims.pop(uid, None) is not None:
            self._save_or_restore(before)

    def _save_or_restore(self, before: dict[str, PreparedClaim]) -> None:
        try:
            self._save()
        except OSError as err:
            self.claims = before
            raise CheckpointError(f"cannot write checkpoint {self.path}: {err}") from None

    def _save(self) -> None:
        claims = {uid: c.to_json() for uid, c in sorted(self.claims.items())}
        write_atomically(self.path, {"version": CHECKPOINT_VERSION, "claims": claims})
