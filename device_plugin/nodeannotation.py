"""The node's core-allocation record, published by the device plugin on its own Node.

With the device plugin, nothing in the API says which cores a pod got: the kubelet keeps its
Allocate answers in its checkpoint and serves them only on the node's PodResources socket.  The
plugin already lists that socket (``podresources``), so it can say it: each pod's device IDs,
mapped to cores (a device ID stands for all of its device's cores), and the cores it reports
unhealthy, as the ``neurongroups.dev/core-allocations`` annotation (``neuron_cores.allocations``)
that ``kubectl neuron cores`` and the operator's ``status.allocatedCores`` read.

The record is sent only when it changed; a listing or a patch that fails changes nothing and is
tried again at the next poll, logged once until it works again.  What the plugin may write is
narrowed by the chart: RBAC ``patch`` on nodes, and a ValidatingAdmissionPolicy that lets the
plugin's ServiceAccount change only this annotation, and only on the node its token is bound to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import grpc

from neuron_cores import ALLOCATIONS_ANNOTATION, format_record
from neuron_device_plugin.podresources import PodHolding
from neuron_device_plugin.resources import ResourceKind, cores_of_ids
from neuron_device_plugin.topology import Topology

log = logging.getLogger(__name__)

# Writes the annotation's value on the node; raises ``PatchError`` (or ``OSError``) on failure.
Patch = Callable[[str], None]


class PatchError(Exception):
    """The API server refused the Node patch, or could not be reached; the message says why."""


def pod_cores(
    holdings: Iterable[PodHolding], names: Mapping[ResourceKind, str], topology: Topology
) -> dict[str, tuple[int, ...]]:
    """``namespace/pod`` -> the cores its containers hold through either resource."""
    kinds = {name: kind for kind, name in names.items()}
    held: dict[str, set[int]] = {}
    for holding in holdings:
        kind = kinds.get(holding.resource)
        if kind is None:
            continue
        cores = cores_of_ids(kind, holding.device_ids, topology)
        if cores:
            held.setdefault(f"{holding.namespace}/{holding.pod}", set()).update(cores)
    return {pod: tuple(sorted(cores)) for pod, cores in held.items()}


def node_record(
    holdings: Iterable[PodHolding],
    names: Mapping[ResourceKind, str],
    topology: Topology,
    unhealthy: Collection[int],
) -> str:
    """The annotation value for this node (keys sorted: an unchanged node is an unchanged text)."""
    text: str = format_record(
        len(topology.cores), pod_cores(holdings, names, topology), sorted(unhealthy)
    )
    return text


def merge_patch(record: str) -> dict[str, Any]:
    """The Node patch: this one annotation, nothing else."""
    return {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: record}}}


class AllocationPublisher:
    """One step per health poll: list the pods' devices, and patch the Node if the record moved."""

    def __init__(
        self,
        node: str,
        patch: Patch,
        lister: Callable[[], Sequence[PodHolding]],
        names: Mapping[ResourceKind, str],
    ) -> None:
        self.node = node
        self.patch = patch
        self.lister = lister
        self.names = dict(names)
        self.published: str | None = None
        self._failure: str | None = None

    def publish(self, topology: Topology, unhealthy: Collection[int]) -> bool:
        """True when a new record was written."""
        try:
            record = node_record(self.lister(), self.names, topology, unhealthy)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            return self._failed(f"listing pod resources failed ({code})")
        except OSError as err:
            return self._failed(f"listing pod resources failed ({err})")
        if record == self.published:
            return False
        try:
            self.patch(record)
        except (PatchError, OSError) as err:  # kept for the next poll, said once
            return self._failed(f"patching node {self.node} failed ({err})")
        if self._failure is not None:
            log.info("publishing node %s's core allocations works again", self.node)
        self._failure = None
        self.published = record
        log.info("published node %s's core allocations: %s", self.node, record)
        return True

    def _failed(self, reason: str) -> bool:
        if reason != self._failure:
            log.warning(
                "cannot publish the %s annotation (%s); retrying at every health poll",
                ALLOCATIONS_ANNOTATION,
                reason,
            )
        self._failure = reason
        return False


def node_patcher(node: str, kubeconfig: str | None) -> Patch:
    """A ``Patch`` through the Kubernetes API: a kubeconfig file, else the in-cluster account."""
    # the kubernetes client (about 1.3 s to import) is loaded only when publishing is on
    from kubernetes import client, config  # noqa: PLC0415 (a slow import)
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (a slow import)
    from urllib3.exceptions import HTTPError  # noqa: PLC0415 (with kubernetes)

    try:
        if kubeconfig:
            from_file: Any = config.new_client_from_config
            api_client = from_file(config_file=kubeconfig)
        else:
            in_cluster: Any = config.load_incluster_config
            configuration = client.Configuration()
            in_cluster(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
    except config.ConfigException as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
        raise ValueError(
            f"--publish-allocations cannot reach the API server through {where} ({err}); give "
            "--kubeconfig, run in a pod with a token (the chart mounts one when "
            "devicePlugin.publishAllocations is true), or turn publishing off"
        ) from None
    core = client.CoreV1Api(api_client)

    def patch(record: str) -> None:
        try:
            core.patch_node(node, merge_patch(record), _preload_content=False)
        except ApiException as err:
            raise PatchError(f"HTTP {err.status} {err.reason}: {_message(err.body)}") from None
        except HTTPError as err:
            raise PatchError(f"the API server could not be reached: {err}") from None

    return patch


def _message(body: object) -> str:
    """The ``message`` of a Kubernetes Status body (what an admission policy said)."""
    try:
        return str(json.loads(body if isinstance(body, str | bytes) else "").get("message"))
    except (ValueError, AttributeError):
        return str(body)
