"""What a kubelet does for DRA (Dynamic Resource Allocation), for the emulated node.

A real kubelet (``pkg/kubelet/pluginmanager`` and ``pkg/kubelet/cm/dra`` of k8s.io/kubernetes):

* watches its plugins registry folder; for each new socket it calls ``GetInfo``, accepts a
  ``DRAPlugin`` that supports ``v1.DRAPlugin``, dials the endpoint it names and answers
  ``NotifyRegistrationStatus``; a socket that disappears deregisters the driver;
* before starting a pod's containers it finds the pod's claims (``spec.resourceClaims`` by name or
  through ``status.resourceClaimStatuses`` for claims made from templates, plus
  ``status.extendedResourceClaimStatus`` for extended resources served by DRA), checks each is
  allocated and reserved for the pod, and calls ``NodePrepareResources`` of each driver that has
  devices in it; a failure leaves the pod waiting and is retried;
* hands each container the CDI devices of the claims (and requests) it names in
  ``resources.claims`` (and, for the extended-resource claim, the requests mapped to it), which
  the container runtime applies from the CDI specs;
* calls ``NodeUnprepareResources`` once no pod on the node uses the claim any more.

Here the "runtime" is :mod:`neuron_localcluster.node_agent`: it applies a CDI spec's ``env`` edits
to the process environment; ``deviceNodes`` and ``mounts`` cannot be applied to a plain process
(the emulated node has no ``/dev/neuronN``), so they are only recorded in ``allocations.json``.
The registry is polled once per agent tick, not watched with inotify.

The functions over pods, claims and CDI specs are pure; :class:`PluginWatcher` and
:class:`DRAKubelet` do the gRPC and file I/O.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from neuron_dra_driver.api import dra_pb2 as dra
from neuron_dra_driver.api import pluginregistration_pb2 as reg
from neuron_dra_driver.api.services import (
    DRA_PLUGIN_TYPE,
    DRA_SERVICE_VERSION,
    DRAPluginStub,
    RegistrationStub,
)

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0
EXTENDED_CLAIM = ""  # the pod-claim name under which the extended-resource claim is kept


class ClaimsNotReadyError(RuntimeError):
    """The pod cannot start yet (claim not created, allocated, reserved or prepared); retried.

    ``prepared`` lists the pod's claims that were prepared before the failure: they stay
    prepared for the retry, and are unprepared if the pod goes before it starts.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.prepared: list[ClaimHandle] = []


# ---- pure: pods, claims, CDI ----------------------------------------------------------------


@dataclass(frozen=True)
class PodClaim:
    """One claim a pod uses: its name in ``pod.spec.resourceClaims`` and the ResourceClaim's name.

    ``pod_claim`` is :data:`EXTENDED_CLAIM` for the claim the scheduler made for extended
    resources; ``mappings`` then holds ``(container, request)`` pairs from the pod's status.
    """

    pod_claim: str
    claim: str
    mappings: tuple[tuple[str, str], ...] = ()


def pod_claims(pod: Mapping[str, Any]) -> list[PodClaim]:
    """The ResourceClaims ``pod`` uses; :class:`ClaimsNotReadyError` while one has no name yet."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    generated = {
        str(item.get("name")): item.get("resourceClaimName")
        for item in status.get("resourceClaimStatuses") or []
    }
    found: list[PodClaim] = []
    for entry in spec.get("resourceClaims") or []:
        name = str(entry.get("name"))
        if entry.get("resourceClaimName"):
            found.append(PodClaim(name, str(entry["resourceClaimName"])))
        elif entry.get("resourceClaimTemplateName"):
            made = generated.get(name)
            if not made:
                raise ClaimsNotReadyError(
                    f"pod claim {name!r}: the ResourceClaim from template "
                    f"{entry['resourceClaimTemplateName']!r} is not recorded in the pod's "
                    "status.resourceClaimStatuses yet"
                )
            found.append(PodClaim(name, str(made)))
        else:
            raise ClaimsNotReadyError(
                f"pod claim {name!r} names neither resourceClaimName nor resourceClaimTemplateName"
            )
    extended = status.get("extendedResourceClaimStatus") or {}
    if extended.get("resourceClaimName"):
        mappings = tuple(
            (str(m.get("containerName")), str(m.get("requestName")))
            for m in extended.get("requestMappings") or []
        )
        found.append(PodClaim(EXTENDED_CLAIM, str(extended["resourceClaimName"]), mappings))
    return found


def claim_drivers(claim: Mapping[str, Any], pod_uid: str) -> list[str]:
    """The drivers that must prepare ``claim`` for the pod; raises while it is not ready."""
    meta = claim.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    status = claim.get("status") or {}
    allocation = status.get("allocation")
    if not allocation:
        raise ClaimsNotReadyError(f"claim {where} is not allocated yet")
    reserved = {str(r.get("uid")) for r in status.get("reservedFor") or []}
    if pod_uid not in reserved:
        raise ClaimsNotReadyError(f"claim {where} is not reserved for pod uid {pod_uid}")
    results = (allocation.get("devices") or {}).get("results") or []
    return sorted({str(r.get("driver")) for r in results if r.get("driver")})


@dataclass(frozen=True)
class PreparedDevice:
    requests: tuple[str, ...]  # empty: every request of the claim
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


def container_devices(
    container: Mapping[str, Any],
    claims: Sequence[PodClaim],
    prepared: Mapping[str, Sequence[PreparedDevice]],
) -> list[PreparedDevice]:
    """The prepared devices one container gets (``prepared`` is keyed by ResourceClaim name)."""
    by_pod_claim = {c.pod_claim: c for c in claims}
    name = str(container.get("name"))
    chosen: list[PreparedDevice] = []
    for ref in (container.get("resources") or {}).get("claims") or []:
        claim = by_pod_claim.get(str(ref.get("name")))
        if claim is None:
            continue  # the API server refuses such pods; nothing to hand over
        request = str(ref.get("request") or "")
        for device in prepared.get(claim.claim, ()):
            if not request or not device.requests or request in device.requests:
                chosen.append(device)
    extended = by_pod_claim.get(EXTENDED_CLAIM)
    if extended is not None:
        wanted = {req for cname, req in extended.mappings if cname == name}
        for device in prepared.get(extended.claim, ()):
            if wanted & set(device.requests):
                chosen.append(device)
    return chosen


@dataclass
class Edits:
    """What the CDI devices of one container add: env and the edits the emulation cannot apply."""

    env: dict[str, str] = field(default_factory=dict)
    device_nodes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cdi_ids: list[str] = field(default_factory=list)


def index_cdi_specs(specs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[Mapping[str, Any], ...]]:
    """``kind=name`` -> (the spec's container edits, the device's container edits)."""
    index: dict[str, tuple[Mapping[str, Any], ...]] = {}
    for spec in specs:
        kind = str(spec.get("kind", ""))
        common = spec.get("containerEdits") or {}
        for device in spec.get("devices") or []:
            index[f"{kind}={device.get('name')}"] = (common, device.get("containerEdits") or {})
    return index


def apply_cdi(cdi_ids: Sequence[str], index: Mapping[str, tuple[Mapping[str, Any], ...]]) -> Edits:
    """The edits of ``cdi_ids`` in order, as a runtime applies them; an unknown id is an error."""
    edits = Edits()
    for cdi_id in cdi_ids:
        if cdi_id not in index:
            raise ClaimsNotReadyError(
                f"CDI device {cdi_id!r} is in no CDI spec of the CDI folder; the driver "
                "should have written it while preparing"
            )
        edits.cdi_ids.append(cdi_id)
        for part in index[cdi_id]:
            for item in part.get("env") or []:
                key, sep, value = str(item).partition("=")
                if not sep or not key:
                    raise ClaimsNotReadyError(
                        f"CDI device {cdi_id!r}: env item {item!r} is not K=V"
                    )
                edits.env[key] = value
            edits.device_nodes.extend(str(n.get("path")) for n in part.get("deviceNodes") or [])
            edits.mounts.extend(str(m.get("containerPath")) for m in part.get("mounts") or [])
    return edits


def read_cdi_specs(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` CDI spec in ``folder`` (a spec being replaced is read on the next try)."""
    specs = []
    for path in sorted(folder.glob("*.json")):
        try:
            specs.append(dict(json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            log.warning("skipping CDI spec %s: %s", path, exc)
    return specs


# ---- I/O: registration and prepare ----------------------------------------------------------


@dataclass
class Driver:
    name: str
    endpoint: str
    channel: grpc.Channel
    stub: DRAPluginStub


def refusal(info: reg.PluginInfo) -> str | None:
    """Why the kubelet would refuse ``info`` (None: accept); pure."""
    if info.type != DRA_PLUGIN_TYPE:
        return f"plugin type {info.type!r} is not handled here (only {DRA_PLUGIN_TYPE})"
    if not info.name:
        return "the plugin gave no driver name"
    if DRA_SERVICE_VERSION not in info.supported_versions:
        return (
            f"none of the versions {list(info.supported_versions)} is supported; this kubelet "
            f"speaks {DRA_SERVICE_VERSION}"
        )
    return None


# The kubelet deletes a driver's ResourceSlices for its node once the driver has been gone this long
# without registering again (pkg/kubelet/cm/dra/manager.go, defaultWipingDelay): an uninstalled
# driver leaves no devices behind for the scheduler, while a restarting one keeps them.
WIPING_DELAY_S = 30.0


class PluginWatcher:
    """The kubelet's plugin watcher over a registry folder, polled by :meth:`scan`.

    ``wipe(driver)`` is called for a driver that deregistered and did not come back within
    ``wiping_delay_s``, as the kubelet then deletes that driver's ResourceSlices for its node.
    """

    def __init__(
        self,
        registry_dir: Path,
        *,
        wipe: Callable[[str], None] | None = None,
        wiping_delay_s: float = WIPING_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry_dir = registry_dir
        self.wipe = wipe
        self.wiping_delay_s = wiping_delay_s
        self.clock = clock
        # driver name -> when it deregistered, until it comes back or its slices are wiped
        self.gone_since: dict[str, float] = {}
        self.drivers: dict[str, Driver] = {}
        # (socket, inode, ctime) -> driver name ("" when refused): tells a socket a restarted
        # driver created again between two scans from the one it replaced (the inode number
        # alone is often reused)
        self._seen: dict[tuple[Path, int, int], str] = {}

    def scan(self) -> None:
        sockets: set[tuple[Path, int, int]] = set()
        for path in self.registry_dir.glob("*.sock"):
            try:
                if path.is_socket():
                    stat = path.stat()
                    sockets.add((path, stat.st_ino, stat.st_ctime_ns))
            except OSError:
                continue  # removed while listing
        for gone in sorted(set(self._seen) - sockets):
            name = self._seen.pop(gone)
            driver = self.drivers.get(name) if name else None
            if driver is not None and not any(n == name for n in self._seen.values()):
                self.drivers.pop(name)
                driver.channel.close()
                log.info("DRA driver %s deregistered (socket %s removed)", name, gone[0])
                self.gone_since[name] = self.clock()
        for new in sorted(sockets - set(self._seen)):
            name = self._register(new[0])
            self._seen[new] = name
            self.gone_since.pop(name, None)
        self._wipe_due()

    def _wipe_due(self) -> None:
        now = self.clock()
        for name, since in list(self.gone_since.items()):
            if now - since < self.wiping_delay_s:
                continue
            del self.gone_since[name]
            if self.wipe is not None:
                log.info(
                    "DRA driver %s gone for %.0fs; deleting its ResourceSlices for this node",
                    name,
                    now - since,
                )
                self.wipe(name)

    def _register(self, socket: Path) -> str:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = RegistrationStub(channel)
            try:
                info = stub.get_info(reg.InfoRequest(), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                log.warning("GetInfo on %s failed: %s; ignoring the socket", socket, exc)
                return ""
            why = refusal(info)
            if why is None and info.name in self.drivers:
                self.drivers.pop(info.name).channel.close()  # a restarted driver replaces itself
            if why is None:
                endpoint = info.endpoint or str(socket)
                plugin_channel = grpc.insecure_channel(f"unix://{endpoint}")
                self.drivers[info.name] = Driver(
                    info.name, endpoint, plugin_channel, DRAPluginStub(plugin_channel)
                )
            try:
                stub.notify_registration_status(
                    reg.RegistrationStatus(plugin_registered=why is None, error=why or ""),
                    timeout=RPC_TIMEOUT_S,
                )
            except grpc.RpcError as exc:
                log.warning("NotifyRegistrationStatus on %s failed: %s", socket, exc)
        if why is not None:
            log.error("refused plugin on %s: %s", socket, why)
            return ""
        log.info("DRA driver %s registered (endpoint %s)", info.name, info.endpoint)
        return str(info.name)

    def close(self) -> None:
        for driver in self.drivers.values():
            driver.channel.close()
        self.drivers.clear()
        self._seen.clear()


@dataclass(frozen=True)
class ClaimHandle:
    """A prepared claim: what unprepare needs."""

    namespace: str
    name: str
    uid: str
    drivers: tuple[str, ...]


@dataclass
class PodDevices:
    claims: list[ClaimHandle]
    per_container: dict[str, Edits]
    devices: list[str]


class DRAKubelet:
    """Prepares a pod's claims through the registered drivers and reads the CDI edits."""

    def __init__(
        self,
        watcher: PluginWatcher,
        cdi_dir: Path,
        read_claim: Callable[[str, str], Mapping[str, Any] | None],
    ) -> None:
        self.watcher = watcher
        self.cdi_dir = cdi_dir
        self.read_claim = read_claim

    def prepare_pod(self, pod: Mapping[str, Any]) -> PodDevices:
        meta = pod["metadata"]
        namespace, pod_uid = str(meta["namespace"]), str(meta["uid"])
        claims = pod_claims(pod)
        handles: list[ClaimHandle] = []
        prepared: dict[str, list[PreparedDevice]] = {}
        for pod_claim in claims:
            try:
                claim = self.read_claim(namespace, pod_claim.claim)
                if claim is None:
                    raise ClaimsNotReadyError(f"claim {namespace}/{pod_claim.claim} does not exist")
                drivers = claim_drivers(claim, pod_uid)
                uid = str(claim["metadata"]["uid"])
                handle = ClaimHandle(namespace, pod_claim.claim, uid, tuple(drivers))
                devices: list[PreparedDevice] = []
                for name in drivers:
                    devices.extend(self._prepare(name, namespace, pod_claim.claim, uid))
            except ClaimsNotReadyError as exc:
                exc.prepared = handles  # a driver that refused has nothing prepared to undo
                raise
            prepared[pod_claim.claim] = devices
            handles.append(handle)
        index = index_cdi_specs(read_cdi_specs(self.cdi_dir))
        per_container: dict[str, Edits] = {}
        for container in (pod.get("spec") or {}).get("containers") or []:
            chosen = container_devices(container, claims, prepared)
            ids = [i for d in chosen for i in d.cdi_ids]
            try:
                per_container[str(container["name"])] = apply_cdi(ids, index)
            except ClaimsNotReadyError as exc:
                exc.prepared = handles
                raise
        names = sorted({d.device for ds in prepared.values() for d in ds})
        return PodDevices(handles, per_container, names)

    def _driver(self, name: str) -> Driver:
        driver = self.watcher.drivers.get(name)
        if driver is None:
            raise ClaimsNotReadyError(f"DRA driver {name} is not registered on this node")
        return driver

    def _prepare(self, driver: str, namespace: str, name: str, uid: str) -> list[PreparedDevice]:
        request = dra.NodePrepareResourcesRequest(
            claims=[dra.Claim(namespace=namespace, uid=uid, name=name)]
        )
        try:
            response = self._driver(driver).stub.node_prepare_resources(
                request, timeout=RPC_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            raise ClaimsNotReadyError(f"NodePrepareResources of {driver} failed: {exc}") from exc
        answer = response.claims.get(uid)
        if answer is None:
            raise ClaimsNotReadyError(
                f"driver {driver} did not answer for claim {namespace}/{name}"
            )
        if answer.error:
            raise ClaimsNotReadyError(
                f"driver {driver} refused claim {namespace}/{name}: {answer.error}"
            )
        return [
            PreparedDevice(
                tuple(d.request_names), d.pool_name, d.device_name, tuple(d.cdi_device_ids)
            )
            for d in answer.devices
        ]

    def unprepare(self, handle: ClaimHandle) -> bool:
        """NodeUnprepareResources on every driver of the claim; False when one failed."""
        done = True
        for name in handle.drivers:
            request = dra.NodeUnprepareResourcesRequest(
                claims=[dra.Claim(namespace=handle.namespace, uid=handle.uid, name=handle.name)]
            )
            try:
                response = self._driver(name).stub.node_unprepare_resources(
                    request, timeout=RPC_TIMEOUT_S
                )
                error = response.claims[handle.uid].error if handle.uid in response.claims else ""
            except (grpc.RpcError, ClaimsNotReadyError) as exc:
                error = str(exc)
            if error:
                log.warning(
                    "unprepare of claim %s/%s by %s failed: %s",
                    handle.namespace,
                    handle.name,
                    name,
                    error,
                )
                done = False
            else:
                log.info("unprepared claim %s/%s (%s)", handle.namespace, handle.name, name)
        return done
