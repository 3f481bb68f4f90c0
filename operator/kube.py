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
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from neuron_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from neuron_operator.pods import MANAGER, selector_labels

log = logging.getLogger(__name__)

CONFLICT = 409
NOT_FOUND = 404
BAD_REQUEST = 400
INVALID = 422


class PodRefusedError(Exception):
    """The API server refused a planned pod as invalid (400/422): a problem of the spec's pod
    settings that no schema caught, such as ``resources.requests.cpu: lots``.  The reconciler
    reports it on status as ``InvalidSpec``, like any other bad spec, instead of retrying blind."""


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.reason)


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


class Kube:
    """The API calls of the reconcile loop."""

    def __init__(self, api_client: client.ApiClient, *, instance: str = MANAGER) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.instance = instance

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

    def list_pods(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(workload).items())
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(response)["items"])

    def create_pod(self, body: Mapping[str, Any]) -> bool:
        """Create a pod; False when one of that name already exists."""
        try:
            self.core.create_namespaced_pod(body["metadata"]["namespace"], _any(body))
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            if error.status in (BAD_REQUEST, INVALID):
                raise PodRefusedError(
                    f"the API server refused pod {body['metadata']['name']}: "
                    f"{_api_message(error)}; fix the pod settings in spec (resources, env, "
                    "volumes, volumeMounts, tolerations, nodeSelector, image)"
                ) from None
            raise
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False when it is already gone."""
        try:
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise
        return True

    def ensure_service(self, body: Mapping[str, Any]) -> bool:
        """Create the Service if it is missing; True when it was created."""
        meta = body["metadata"]
        try:
            self.core.read_namespaced_service(meta["name"], meta["namespace"])
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise
        else:
            return False
        try:
            self.core.create_namespaced_service(meta["namespace"], _any(body))
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}
        )

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
            "message": message[:1024],
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(str(meta.get("namespace")), _any(body))
        except ApiException as error:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), error)
