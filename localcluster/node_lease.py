"""The emulated node's Lease in ``kube-node-lease``: its heartbeat.

The node lifecycle controller marks a node NotReady (and evicts its pods) when its Lease is not
renewed within ``leaseDurationSeconds``; a kubelet renews every 10 s, and so does the agent.
:func:`lease_manifest` is the pure part; :class:`NodeLease` decides when a renewal is due and
writes it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from neuron_localcluster.kube import ApiException, body

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
RENEW_EVERY_S = 10.0


def lease_manifest(node: str, now: dt.datetime) -> dict[str, Any]:
    """The node's Lease, held by the node and renewed at ``now`` (an aware datetime)."""
    # A MicroTime: the client re-renders it with isoformat(), which drops a zero fraction
    # that the apiserver then refuses; a non-zero microsecond keeps the fraction.
    stamp = now.replace(microsecond=now.microsecond or 1).isoformat()
    return {
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": stamp,
        },
    }


class NodeLease:
    """Renews the node's Lease when :meth:`renew` is called and the last renewal is 10 s old."""

    def __init__(
        self,
        coord: k8s.CoordinationV1Api,
        node: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.coord = coord
        self.node = node
        self.clock = clock
        self.wall_clock = wall_clock
        self._next = 0.0

    def renew(self) -> bool:
        """Patch (or create) the Lease if a renewal is due; whether one was."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + RENEW_EVERY_S
        lease = lease_manifest(self.node, self.wall_clock())
        try:
            self.coord.patch_namespaced_lease(self.node, LEASE_NAMESPACE, lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease(LEASE_NAMESPACE, body(lease))
        return True
