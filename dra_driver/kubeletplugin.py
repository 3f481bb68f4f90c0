"""The kubelet side: the DRA v1 gRPC service and the plugin registration service, on unix sockets.

* ``NodePrepareResources``: for each claim, answer from the checkpoint if it was prepared before
  (idempotent, also across restarts); otherwise read the claim from the API server, check it
  (:func:`neuron_dra_driver.prepare.plan_claim`), refuse cores another prepared claim holds, write
  its CDI spec, then checkpoint it.  A refused claim gets an error in the response and nothing is
  written for it; the other claims of the same call are prepared independently.
* ``NodeUnprepareResources``: delete the claim's CDI spec and its checkpoint entry; a claim that
  is not prepared is already unprepared (success), because the kubelet repeats calls.
* Registration: ``GetInfo`` names the driver, the DRA socket and the service ``v1.DRAPlugin``;
  ``NotifyRegistrationStatus`` is logged and kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

import grpc

from neuron_device_plugin.topology import Topology
from neuron_dra_driver.api import dra_pb2 as dra
from neuron_dra_driver.api import pluginregistration_pb2 as reg
from neuron_dra_driver.api.services import (
    DRA_PLUGIN_TYPE,
    DRA_SERVICE_VERSION,
    add_dra_servicer,
    add_registration_servicer,
)
from neuron_dra_driver.layout import DRIVER_NAME, NodeShape
from neuron_dra_driver.prepare import (
    Checkpoint,
    CheckpointError,
    ClaimRef,
    PreparedClaim,
    PrepareError,
    cdi_spec_path,
    plan_claim,
    write_atomically,
)

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/plugins") / DRIVER_NAME
DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_CDI_DIR = Path("/var/run/cdi")
PLUGIN_SOCKET = "dra.sock"
CHECKPOINT_FILE = "checkpoint.json"


class ClaimReader(Protocol):
    def read_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ResourceClaim as the API server has it; None when there is none."""
        ...


class KubeClaimReader:
    """:class:`ClaimReader` through ``ResourceV1Api``."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # noqa: PLC0415 (a slow import)

        self._api = client.ResourceV1Api(api_client)
        self._exception: type[Exception] = client.ApiException

    def read_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            response: Any = self._api.read_namespaced_resource_claim(
                name, namespace, _preload_content=False
            )
        except self._exception as err:
            if getattr(err, "status", None) == 404:
                return None
            raise PrepareError(
                f"reading claim {namespace}/{name}: the API server answered "
                f"{getattr(err, 'status', '?')} {getattr(err, 'reason', err)}"
            ) from None
        data: bytes = response.data
        return dict(json.loads(data))


class DRAKubeletPlugin:
    """Prepares and unprepares this node's claims (see the module docstring)."""

    def __init__(
        self,
        *,
        node: str,
        shape: NodeShape,
        topology: Topology,
        reader: ClaimReader,
        cdi_dir: Path,
        checkpoint: Checkpoint,
    ) -> None:
        self.node = node
        self.shape = shape
        self.topology = topology
        self.reader = reader
        self.cdi_dir = cdi_dir
        self.checkpoint = checkpoint
        self._lock = threading.Lock()

    def prepare(self, ref: ClaimRef) -> PreparedClaim:
        with self._lock:
            done = self.checkpoint.get(ref.uid)
            if done is not None:
                path = cdi_spec_path(self.cdi_dir, ref.uid)
                if not path.exists():  # e.g. /var/run/cdi is a tmpfs and the node rebooted
                    write_atomically(path, done.cdi_spec)
                return done
            claim = self.reader.read_claim(ref.namespace, ref.name)
            if claim is None:
                raise PrepareError(
                    f"claim {ref} does not exist on the API server; nothing was prepared"
                )
            prepared = plan_claim(
                ref, claim, node=self.node, shape=self.shape, topology=self.topology
            )
            for other in self.checkpoint.claims.values():
                taken = sorted(set(other.cores) & set(prepared.cores))
                if taken:
                    raise PrepareError(
                        f"claim {ref}: cores {taken} are prepared for claim {other.claim}; "
                        "two claims never share cores, so one of them is stale"
                    )
            path = cdi_spec_path(self.cdi_dir, ref.uid)
            write_atomically(path, prepared.cdi_spec)
            try:
                self.checkpoint.put(prepared)
            except CheckpointError:
                path.unlink(missing_ok=True)
                raise
            log.info("prepared claim %s: cores %s", ref, list(prepared.cores))
            return prepared

    def unprepare(self, ref: ClaimRef) -> None:
        with self._lock:
            if self.checkpoint.get(ref.uid) is None:
                log.info("claim %s is not prepared here; nothing to undo", ref)
                return
            cdi_spec_path(self.cdi_dir, ref.uid).unlink(missing_ok=True)
            self.checkpoint.remove(ref.uid)
            log.info("unprepared claim %s", ref)

    # gRPC: DRAPlugin
    def node_prepare_resources(
        self, request: dra.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodePrepareResourcesResponse:
        response = dra.NodePrepareResourcesResponse()
        for claim in request.claims:
            ref = ClaimRef(claim.namespace, claim.name, claim.uid)
            answer = response.claims[claim.uid]
            try:
                prepared = self.prepare(ref)
            except (PrepareError, CheckpointError, OSError) as err:
                log.error("refused to prepare claim %s: %s", ref, err)
                answer.error = str(err)
                continue
            for device in prepared.devices:
                answer.devices.add(
                    request_names=[device.request],
                    pool_name=device.pool,
                    device_name=device.device,
                    cdi_device_ids=list(device.cdi_ids),
                )
        return response

    def node_unprepare_resources(
        self, request: dra.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra.NodeUnprepareResourcesResponse:
        response = dra.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            ref = ClaimRef(claim.namespace, claim.name, claim.uid)
            answer = response.claims[claim.uid]
            try:
                self.unprepare(ref)
            except (CheckpointError, OSError) as err:
                log.error("failed to unprepare claim %s: %s", ref, err)
                answer.error = str(err)
        return response


class Registration:
    """The plugin registration service: what the kubelet's plugin watcher asks."""

    def __init__(self, endpoint: Path) -> None:
        self.endpoint = endpoint
        self.status: reg.RegistrationStatus | None = None
        self.notified = threading.Event()

    def get_info(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:
        return reg.PluginInfo(
            type=DRA_PLUGIN_TYPE,
            name=DRIVER_NAME,
            endpoint=str(self.endpoint),
            supported_versions=[DRA_SERVICE_VERSION],
        )

    def notify_registration_status(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        self.status = request
        if request.plugin_registered:
            log.info("the kubelet registered DRA driver %s", DRIVER_NAME)
        else:
            log.error("the kubelet refused DRA driver %s: %s", DRIVER_NAME, request.error)
        self.notified.set()
        return reg.RegistrationStatusResponse()


class KubeletPluginServer:
    """Both services on their sockets; ``stop`` removes the sockets, so the kubelet forgets us."""

    def __init__(self, plugin: DRAKubeletPlugin, plugin_dir: Path, registry_dir: Path) -> None:
        self.plugin = plugin
        self.plugin_socket = plugin_dir / PLUGIN_SOCKET
        self.registry_socket = registry_dir / f"{DRIVER_NAME}-reg.sock"
        self.registration = Registration(self.plugin_socket)
        self._servers: list[grpc.Server] = []

    def start(self) -> None:
        for socket in (self.plugin_socket, self.registry_socket):
            socket.parent.mkdir(parents=True, exist_ok=True)
            socket.unlink(missing_ok=True)  # a stale socket from a crash
        dra_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_dra_servicer(dra_server, self.plugin)
        dra_server.add_insecure_port(f"unix://{self.plugin_socket.resolve()}")
        dra_server.start()
        self._servers.append(dra_server)
        # The registration socket last: once it appears, the kubelet dials the plugin socket.
        reg_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        add_registration_servicer(reg_server, self.registration)
        reg_server.add_insecure_port(f"unix://{self.registry_socket.resolve()}")
        reg_server.start()
        self._servers.append(reg_server)
        log.info("serving DRA on %s, registration on %s", self.plugin_socket, self.registry_socket)

    def stop(self, grace_s: float = 1.0) -> None:
        for server in reversed(self._servers):
            server.stop(grace_s).wait(grace_s + 1)
        self._servers.clear()
        for socket in (self.registry_socket, self.plugin_socket):
            socket.unlink(missing_ok=True)
