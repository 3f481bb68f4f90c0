"""One reconcile of one NeuronWorkload, in the fixed order sample-controller taught us.

Read the object, compute the desired pods (pure planner and builders), make sure the Service
exists, list the pods and keep only those this object controls, apply the pure diff (creates
answered 409 and deletes answered 404 are fine), and write status last, only when it changed, so
the watch does not echo our own writes back forever.  A bad spec never raises: it becomes the
``InvalidSpec`` condition and the pods that exist are left as they are (nothing is lost).

A per-object lock serialises the callers (watch events of the object, of its pods, and the
periodic resync), which run on kopf's thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from neuron_operator import conditions as c
from neuron_operator import metrics
from neuron_operator.api import InvalidSpecError, workload_from_object
from neuron_operator.kube import Kube, PodRefusedError, controller_uid, now_rfc3339
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod, build_service, selector_string, template_hash
from neuron_operator.reconcile import (
    compute_status,
    diff,
    invalid_status,
    observe_pod,
)

log = logging.getLogger(__name__)

WARNING = "Warning"
NORMAL = "Normal"


def _strip_times(status: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(status)
    result["conditions"] = [
        {k: v for k, v in x.items() if k != "lastTransitionTime"}
        for x in status.get("conditions") or []
    ]
    return result


def status_changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    old = _strip_times(previous)
    return any(old.get(k) != v for k, v in _strip_times(new).items())


def _condition_true(status: Mapping[str, Any], type_: str) -> bool:
    found = c.find(status.get("conditions"), type_)
    return found is not None and found.get("status") == c.TRUE


class Reconciler:
    """Reconciles NeuronWorkloads through a ``Kube``; acts only while ``is_leader()``."""

    def __init__(self, kube: Kube, is_leader: Callable[[], bool] = lambda: True) -> None:
        self.kube = kube
        self.is_leader = is_leader
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def reconcile_by_name(self, namespace: str, name: str) -> None:
        if not self.is_leader():
            return
        with self._lock(namespace, name):
            body = self.kube.get_workload(namespace, name)
            if body is not None:
                self._reconcile_timed(body)

    def reconcile(self, body: Mapping[str, Any]) -> None:
        """Reconcile from a watch event: the object is read again under the lock."""
        meta = body.get("metadata") or {}
        self.reconcile_by_name(str(meta.get("namespace")), str(meta.get("name")))

    def resync(self, namespaces: Sequence[str]) -> int:
        """Reconcile every NeuronWorkload (the level-based safety net); returns how many."""
        if not self.is_leader():
            return 0
        count = 0
        for body in self.kube.list_workloads(namespaces):
            meta = body["metadata"]
            try:
                self.reconcile_by_name(meta["namespace"], meta["name"])
                count += 1
            except Exception:  # one bad object must not stop the others
                log.exception("reconcile of %s/%s failed", meta["namespace"], meta["name"])
        return count

    def _reconcile_timed(self, body: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        try:
            result = self._reconcile(body)
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(result).inc()

    def _reconcile(self, body: Mapping[str, Any]) -> str:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return "ok"  # the garbage collector removes the pods through their owner references
        previous: Mapping[str, Any] = body.get("status") or {}
        generation = int(meta.get("generation") or 0)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        try:
            workload = workload_from_object(body)
            result = plan(workload.spec)
        except InvalidSpecError as error:
            return self._report_invalid(body, previous, error.problems)
        hash_ = template_hash(workload.spec)
        desired = {(p.replica, p.index): build_pod(p, workload) for p in result.pods}
        by_name = {pod["metadata"]["name"]: pod for pod in desired.values()}
        if self.kube.ensure_service(build_service(workload)):
            self.kube.post_event(body, NORMAL, c.EVENT_SERVICE, f"created Service {name}")
        owned = [
            p for p in self.kube.list_pods(namespace, name) if controller_uid(p) == meta["uid"]
        ]
        observed = [observe_pod(p) for p in owned]
        actions = diff(list(by_name), hash_, observed)
        try:
            self._apply(body, actions.create, actions.delete, by_name)
        except PodRefusedError as error:
            return self._report_invalid(body, previous, [str(error)])
        status = compute_status(
            generation=generation,
            result=result,
            current_hash=hash_,
            desired={k: v["metadata"]["name"] for k, v in desired.items()},
            observed=observed,
            selector=selector_string(name),
        )
        stuck = sum(1 for p in observed if p.unschedulable and not p.terminating)
        metrics.UNSCHEDULABLE_PODS.labels(namespace, name).set(stuck)
        if _condition_true(status, c.UNSCHEDULABLE) and not _condition_true(
            previous, c.UNSCHEDULABLE
        ):
            message = str((c.find(status["conditions"], c.UNSCHEDULABLE) or {}).get("message"))
            self.kube.post_event(body, WARNING, c.EVENT_UNSCHEDULABLE, message)
        self._write_status(body, previous, status)
        return "ok"

    def _report_invalid(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], problems: Sequence[str]
    ) -> str:
        """``InvalidSpec`` on status and a Warning Event; the pods that exist are left alone."""
        meta = body.get("metadata") or {}
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        status = invalid_status(
            generation=int(meta.get("generation") or 0),
            problems=problems,
            previous=previous,
            selector=selector_string(name),
        )
        if not _condition_true(previous, c.INVALID_SPEC) or status_changed(previous, status):
            message = "; ".join(problems)
            self.kube.post_event(body, WARNING, c.EVENT_INVALID, message)
            log.warning("%s/%s has an invalid spec: %s", namespace, name, message)
        self._write_status(body, previous, status)
        return "invalid"

    def _apply(
        self,
        body: Mapping[str, Any],
        create: Sequence[str],
        delete: Sequence[str],
        pods: Mapping[str, Mapping[str, Any]],
    ) -> None:
        namespace = str(body["metadata"]["namespace"])
        created = [n for n in create if self.kube.create_pod(pods[n])]
        deleted = [n for n in delete if self.kube.delete_pod(namespace, n)]
        metrics.PODS_CREATED.inc(len(created))
        metrics.PODS_DELETED.inc(len(deleted))
        if created:
            log.info("%s/%s: created pods %s", namespace, body["metadata"]["name"], created)
            self.kube.post_event(
                body, NORMAL, c.EVENT_CREATED, f"created {len(created)} pods: {', '.join(created)}"
            )
        if deleted:
            log.info("%s/%s: deleted pods %s", namespace, body["metadata"]["name"], deleted)
            self.kube.post_event(
                body, NORMAL, c.EVENT_DELETED, f"deleted {len(deleted)} pods: {', '.join(deleted)}"
            )

    def _write_status(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], status: dict[str, Any]
    ) -> None:
        status["conditions"] = c.merge_conditions(
            previous.get("conditions"), status["conditions"], now_rfc3339()
        )
        if status_changed(previous, status):
            meta = body["metadata"]
            self.kube.patch_status(meta["namespace"], meta["name"], status)
