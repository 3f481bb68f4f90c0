"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two operator replicas never both act.

Why a Lease and not kopf's peering: kopf peering needs its own CRDs installed, and replicas with
equal priority only get a warning ("possibly conflicting operators"), not exclusion.  A Lease is
built into every cluster, and its ``resourceVersion`` makes takeover a compare-and-swap: of two
replicas racing for an expired Lease, the API server accepts exactly one update.

The leader renews every ``renew_seconds``; it stops acting (``is_leader()`` turns False) as soon as
its last successful renewal is older than ``lease_seconds - renew_seconds``, before any other
replica may take over (after ``lease_seconds`` without renewal), the same margin client-go keeps.
The decision itself is a pure function (``may_take``), tested as a table.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from neuron_operator import metrics

log = logging.getLogger(__name__)


def _any(body: object) -> Any:
    return body


MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text)


def may_take(spec: Mapping[str, Any], identity: str, now: datetime.datetime) -> bool:
    """Whether ``identity`` may write itself as holder of a Lease with this spec."""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    if renewed is None:
        return True
    return now > renewed + datetime.timedelta(seconds=int(duration))


class LeaseElector:
    """Holds (or waits for) one Lease; ``run()`` loops until the stop event is set."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        on_elected: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if renew_seconds >= lease_seconds:
            raise ValueError(
                f"renew interval {renew_seconds}s must be shorter than the lease {lease_seconds}s"
            )
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_elected = on_elected
        self.clock = clock
        self._valid_until = 0.0
        self._transitions = 0

    def is_leader(self) -> bool:
        return self.clock() < self._valid_until

    def _body(self, spec: Mapping[str, Any], version: str | None) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime(MICRO_TIME)
        held = spec.get("holderIdentity") == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if held else 1)
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": spec.get("acquireTime") if held else now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True while we hold it."""
        started = self.clock()
        lease = self._read()
        if lease is None:
            self.api.create_namespaced_lease(self.namespace, _any(self._body({}, None)))
            return self._held(started)
        spec = lease.get("spec") or {}
        if not may_take(spec, self.identity, datetime.datetime.now(datetime.UTC)):
            return False
        version = lease["metadata"]["resourceVersion"]
        self.api.replace_namespaced_lease(
            self.name, self.namespace, _any(self._body(spec, version))
        )
        return self._held(started)

    def _read(self) -> dict[str, Any] | None:
        try:
            response: Any = self.api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        lease: dict[str, Any] = json.loads(response.data)
        return lease

    def _held(self, started: float) -> bool:
        self._valid_until = started + self.lease_seconds - self.renew_seconds
        return True

    def step(self) -> None:
        was = self.is_leader()
        try:
            held = self.try_acquire()
        except ApiException as error:
            # 409: another replica won the compare-and-swap; anything else: try again later.
            log.info("lease %s/%s not taken: %s", self.namespace, self.name, error.reason)
            held = False
        except (HTTPError, OSError) as error:
            log.warning("lease %s/%s unreachable: %s", self.namespace, self.name, error)
            held = False
        if held and not was:
            log.info("became leader (lease %s/%s) as %s", self.namespace, self.name, self.identity)
            self.on_elected()
        elif was and not self.is_leader():
            log.warning("lost leadership (lease %s/%s)", self.namespace, self.name)
        metrics.LEADER.set(1 if self.is_leader() else 0)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.renew_seconds)
        self.release()

    def release(self) -> None:
        """Give the Lease up on a clean exit, so a standby takes over without waiting."""
        if not self.is_leader():
            return
        self._valid_until = 0.0
        metrics.LEADER.set(0)
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {
                k: v for k, v in lease["spec"].items() if k not in ("holderIdentity", "renewTime")
            }
            self.api.replace_namespaced_lease(
                self.name, self.namespace, _any({**lease, "spec": spec})
            )
        except ApiException as error:
            log.info("could not release lease %s/%s: %s", self.namespace, self.name, error.reason)
