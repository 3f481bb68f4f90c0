"""The one module that talks to the Kubernetes API for the reconcile loop.

Everything here is a thin call with its expected errors translated: 409 on create means "already
there" and 404 on delete means "already gone", both fine for a level-based loop.  Objects are read
as plain JSON dicts (``_preload_content=False``) so the pure code sees the same camelCase shapes as
in YAML, and tests can feed it the same data.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from neuron_cores import ALLOCATIONS_ANNOTATION
from neuron_operator import conditions as c
from neuron_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from neuron_operator.claimkube import ClaimApi
from neuron_operator.pods import MANAGER, selector_labels, service_ports_drift
from neuron_operator.refusals import Refusal, classify_exception, not_owned, quote

log = logging.getLogger(__name__)

CONFLICT = 409
NOT_FOUND = 404
MAX_EVENT_MESSAGE = 1000
PAGE_PODS = 500
SERVICE_CREATED, SERVICE_UPDATED = "created", "updated"  # what ensure_service did
NODE_RECORDS_SECONDS = 10.0  # how long one list of the nodes' allocation records serves


class ChildRefusedError(Exception):
    """A child object (pod, Service) could not be written: ``refusal`` says why, classified by
    ``refusals.classify_exception`` (the one place), or an object of its name is not ours."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal.describe())


# What a call to the API can raise besides a bug: an answer, or no connection at all.
API_ERRORS: tuple[type[BaseException], ...] = (ApiException, HTTPError, OSError)
# What writing a child object can raise: the above, or the client refusing the request itself.
WRITE_ERRORS: tuple[type[BaseException], ...] = (*API_ERRORS, ValueError, TypeError)


def _any(body: object) -> Any:
    """Dict bodies are sent as they are; the client's model types are not needed for that."""
    return body


def _json(response: Any) -> Any:
    return json.loads(response.data)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling NeuronWorkload, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == API_VERSION
        ):
            return str(ref.get("uid"))
    return None


def controller_name(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND:
            return str(ref.get("name"))
    return None


def _owner(obj: Mapping[str, Any]) -> str | None:
    """The object's controller, as ``Kind name``, or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')} {ref.get('name')}"
    return None


def _read_for(
    kind: str,
    meta: Mapping[str, Any],
    read: Callable[[str, str], dict[str, Any] | None],
) -> dict[str, Any] | None:
    """A read made on behalf of writing a child object: its errors are that write's refusal."""
    try:
        return read(meta["namespace"], meta["name"])
    except WRITE_ERRORS as error:
        raise ChildRefusedError(classify_exception(error, kind, meta["name"])) from None


class Kube(ClaimApi):
    """The API calls of the reconcile loop (those of the DRA mode in ``claimkube.ClaimApi``)."""

    def __init__(self, api_client: client.ApiClient, *, instance: str = MANAGER) -> None:
        ClaimApi.__init__(self, api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.instance = instance
        self._records: tuple[float, dict[str, str]] | None = None
        self._records_guard = threading.Lock()

    def node_records(self) -> dict[str, str]:
        """node -> its core-allocation record (the annotation the device plugin publishes), for
        the nodes that have one.  One list of nodes serves every reconcile for
        ``NODE_RECORDS_SECONDS``: a cluster of 100 nodes and many workloads is listed a few times
        a minute, not at every pod event."""
        with self._records_guard:
            now = time.monotonic()
            if self._records is not None and now - self._records[0] < NODE_RECORDS_SECONDS:
                return self._records[1]
            response = self.core.list_node(_preload_content=False)
            records = {
                str(node["metadata"]["name"]): str(notes[ALLOCATIONS_ANNOTATION])
                for node in _json(response)["items"]
                if ALLOCATIONS_ANNOTATION in (notes := node["metadata"].get("annotations") or {})
            }
            self._records = (now, records)
            return records

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        result: dict[str, Any] = _json(response)
        return result

    def list_workloads(self, namespaces: Sequence[str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if not namespaces:
            response = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _preload_content=False
            )
            return list(_json(response)["items"])
        for namespace in namespaces:
            response = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _preload_content=False
            )
            items.extend(_json(response)["items"])
        return items

    def list_pods(self, namespace: str, workload: str) -> Iterator[dict[str, Any]]:
        """The workload's pods, read ``PAGE_PODS`` at a time: a caller that keeps only what it
        needs of each pod never holds more than one page of full pod bodies (a list of 3,200
        pods in one piece is some 100 MB of Python objects)."""
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(workload).items())
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"_continue": token} if token else {}
            response = self.core.list_namespaced_pod(
                namespace, label_selector=selector, limit=PAGE_PODS, _preload_content=False,
                **extra,
            )  # fmt: skip
            page = _json(response)
            del response
            yield from page["items"]
            token = (page.get("metadata") or {}).get("continue")
            del page
            if not token:
                return

    def _find_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod by name, through ``list`` (the operator's RBAC has no ``get`` on pods)."""
        response = self.core.list_namespaced_pod(
            namespace, field_selector=f"metadata.name={name}", _preload_content=False
        )
        items = _json(response)["items"]
        return dict(items[0]) if items else None

    def _read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.core.read_namespaced_service(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        result: dict[str, Any] = _json(response)
        return result

    @staticmethod
    def _check_owner(
        existing: Mapping[str, Any] | None, kind: str, meta: Mapping[str, Any], owner_uid: str
    ) -> None:
        """Raise ``NotOwned`` unless ``existing`` is controlled by the NeuronWorkload ``owner_uid``;
        an object gone between the create and the read is retried later."""
        if existing is None:
            message = f"a {kind} of that name existed a moment ago and is gone now"
            refusal = Refusal(c.REASON_API_UNAVAILABLE, kind, meta["name"], message, transient=True)
            raise ChildRefusedError(refusal)
        if controller_uid(existing) != owner_uid:
            owner = _owner(existing)
            raise ChildRefusedError(not_owned(kind, meta["name"], meta["namespace"], owner))

    def create_pod(self, body: Mapping[str, Any], owner_uid: str) -> bool:
        """Create a pod; False when this workload's pod of that name already exists.

        Raises ``ChildRefusedError`` for every refusal, and for a pod of that name that belongs
        to someone else (it is never adopted)."""
        meta = body["metadata"]
        try:
            self.core.create_namespaced_pod(meta["namespace"], _any(body), _preload_content=False)
        except ApiException as error:
            if error.status != CONFLICT:
                raise ChildRefusedError(classify_exception(error, "Pod", meta["name"])) from None
            existing = _read_for("Pod", meta, self._find_pod)
            self._check_owner(existing, "Pod", meta, owner_uid)
            return False
        except WRITE_ERRORS as error:
            raise ChildRefusedError(classify_exception(error, "Pod", meta["name"])) from None
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False when it is already gone."""
        try:
            self.core.delete_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise ChildRefusedError(classify_exception(error, "Pod", name)) from None
        except WRITE_ERRORS as error:
            raise ChildRefusedError(classify_exception(error, "Pod", name)) from None
        return True

    def ensure_service(self, body: Mapping[str, Any], owner_uid: str) -> str:
        """Create the Service if it is missing (``SERVICE_CREATED``), or write its ports when
        they differ from ``body``'s (``SERVICE_UPDATED``: ``spec.container.ports`` was edited);
        "" when it was as it should be.

        A Service of that name that this workload does not control is never adopted or changed:
        ``ChildRefusedError`` with ``NotOwned``; any other refusal is classified the same way."""
        meta = body["metadata"]
        existing = _read_for("Service", meta, self._read_service)
        if existing is not None:
            self._check_owner(existing, "Service", meta, owner_uid)
            return self._update_service_ports(existing, body)
        try:
            self.core.create_namespaced_service(
                meta["namespace"], _any(body), _preload_content=False
            )
        except ApiException as error:
            if error.status != CONFLICT:
                raise ChildRefusedError(
                    classify_exception(error, "Service", meta["name"])
                ) from None
            existing = _read_for("Service", meta, self._read_service)
            self._check_owner(existing, "Service", meta, owner_uid)
            return ""
        except WRITE_ERRORS as error:
            raise ChildRefusedError(classify_exception(error, "Service", meta["name"])) from None
        return SERVICE_CREATED

    def _update_service_ports(self, existing: Mapping[str, Any], body: Mapping[str, Any]) -> str:
        """Replace the Service's ports as a whole (a JSON patch: a strategic merge would keep
        ports that were removed), guarded by its resourceVersion."""
        ports = service_ports_drift(existing, body)
        if ports is None:
            return ""
        meta = body["metadata"]
        version = (existing.get("metadata") or {}).get("resourceVersion")
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace", "path": "/spec/ports", "value": ports},
        ]
        try:
            self.core.patch_namespaced_service(
                meta["name"], meta["namespace"], _any(patch), _preload_content=False
            )
        except WRITE_ERRORS as error:
            raise ChildRefusedError(classify_exception(error, "Service", meta["name"])) from None
        return SERVICE_UPDATED

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Write status; False when the NeuronWorkload is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)},
                _preload_content=False,
            )  # fmt: skip
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise
        return True

    def post_event(
        self, workload: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """Record an Event on the NeuronWorkload; a failure is logged, never raised."""
        meta = workload.get("metadata") or {}
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": quote(message, MAX_EVENT_MESSAGE),
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(
                str(meta.get("namespace")), _any(body), _preload_content=False
            )
        except WRITE_ERRORS as error:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), error)
