"""The API calls of the DRA mode: the block DeviceClass (does the cluster offer DRA?), the
workload's ResourceClaimTemplates (created, kept and removed like its Service), the claims
made from them (read for the cores they were allocated) and, while a pod's block claim cannot
be allocated, the driver's ResourceSlices, every namespace's claims and the nodes a pod's
``nodeSelector`` allows (each node's free cores: ``freecores``).

A mixin of ``kube.Kube``, so the reconcile loop keeps one object for the API; the templates'
refusals are classified by ``refusals.classify_exception`` like every other child's, and a
template of the workload's name that another object controls is never adopted (``NotOwned``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from neuron_dra_driver.layout import DRIVER_NAME
from neuron_operator import conditions as c
from neuron_operator.api import API_VERSION, KIND
from neuron_operator.claims import BLOCKS_CLASS, TEMPLATE_KIND
from neuron_operator.pods import selector_labels
from neuron_operator.refusals import Refusal, classify_exception, not_owned

log = logging.getLogger(__name__)

NOT_FOUND, FORBIDDEN, CONFLICT = 404, 403, 409
CLASS_CACHE_SECONDS = 30.0
API_ERRORS: tuple[type[BaseException], ...] = (ApiException, HTTPError, OSError)
_WRITE_ERRORS: tuple[type[BaseException], ...] = (*API_ERRORS, ValueError, TypeError)


class TemplateRefusedError(Exception):
    """A ResourceClaimTemplate could not be written; ``refusal`` says why."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal.describe())


def _json(response: object) -> Any:
    """The body of a ``_preload_content=False`` answer (the client's stubs name the model)."""
    data: Any = getattr(response, "data", b"{}")
    return json.loads(data)


def _any(body: object) -> Any:
    return body


def _controller(obj: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(uid of the controlling NeuronWorkload or None, ``Kind name`` of any controller or None)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            ours = ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION
            return (str(ref.get("uid")) if ours else None), f"{ref.get('kind')} {ref.get('name')}"
    return None, None


class ClaimApi:
    """ResourceClaimTemplates, ResourceClaims and the block DeviceClass (resource.k8s.io/v1)."""

    def __init__(
        self, api_client: client.ApiClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.resource = client.ResourceV1Api(api_client)
        self._clock = clock
        self._class_seen: tuple[float, bool] | None = None
        self._class_guard = threading.Lock()

    def block_class_exists(self) -> bool:
        """Whether the DRA driver's block DeviceClass exists (cached for a while).  A cluster
        without resource.k8s.io/v1 answers 404: no DRA.  A 403 (RBAC lacks ``get`` on
        deviceclasses) is logged and read as no DRA; other errors are raised (retried)."""
        with self._class_guard:
            now = self._clock()
            if self._class_seen is not None and now - self._class_seen[0] < CLASS_CACHE_SECONDS:
                return self._class_seen[1]
            try:
                self.resource.read_device_class(BLOCKS_CLASS, _preload_content=False)
                found = True
            except ApiException as error:
                if error.status == NOT_FOUND:
                    found = False
                elif error.status == FORBIDDEN:
                    log.warning(
                        "cannot read DeviceClass %s (%s): Auto allocation uses the device plugin; "
                        "grant get on deviceclasses.resource.k8s.io to use DRA",
                        BLOCKS_CLASS,
                        error.reason,
                    )
                    found = False
                else:
                    raise
            self._class_seen = (now, found)
            return found

    def _read_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.resource.read_namespaced_resource_claim_template(
                name, namespace, _preload_content=False
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        result: dict[str, Any] = _json(response)
        return result

    def _check_template_owner(self, namespace: str, name: str, owner_uid: str) -> None:
        try:
            existing = self._read_template(namespace, name)
        except _WRITE_ERRORS as error:
            raise TemplateRefusedError(classify_exception(error, TEMPLATE_KIND, name)) from None
        if existing is None:
            message = f"a {TEMPLATE_KIND} of that name existed a moment ago and is gone now"
            raise TemplateRefusedError(
                Refusal(c.REASON_API_UNAVAILABLE, TEMPLATE_KIND, name, message, transient=True)
            )
        uid, owner = _controller(existing)
        if uid != owner_uid:
            raise TemplateRefusedError(not_owned(TEMPLATE_KIND, name, namespace, owner))

    def ensure_claim_template(self, body: Mapping[str, Any], owner_uid: str) -> bool:
        """Create the template if it is missing; True when created.  One of that name controlled
        by someone else raises ``TemplateRefusedError`` with ``NotOwned``; a template's spec is
        immutable, and its name carries its only variable (the size), so an existing one of ours
        is kept as it is."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            self.resource.create_namespaced_resource_claim_template(
                namespace, _any(body), _preload_content=False
            )
        except ApiException as error:
            if error.status != CONFLICT:
                raise TemplateRefusedError(classify_exception(error, TEMPLATE_KIND, name)) from None
            self._check_template_owner(namespace, name, owner_uid)
            return False
        except _WRITE_ERRORS as error:
            raise TemplateRefusedError(classify_exception(error, TEMPLATE_KIND, name)) from None
        return True

    def list_claim_templates(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(workload).items())
        response = self.resource.list_namespaced_resource_claim_template(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(response)["items"])

    def delete_claim_template(self, namespace: str, name: str) -> bool:
        """Delete a template; False when already gone."""
        try:
            self.resource.delete_namespaced_resource_claim_template(
                name, namespace, _preload_content=False
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise TemplateRefusedError(classify_exception(error, TEMPLATE_KIND, name)) from None
        except _WRITE_ERRORS as error:
            raise TemplateRefusedError(classify_exception(error, TEMPLATE_KIND, name)) from None
        return True

    def list_claims(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        """The ResourceClaims made from the workload's templates (they carry its labels)."""
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(workload).items())
        response = self.resource.list_namespaced_resource_claim(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(response)["items"])

    def list_block_slices(self) -> list[dict[str, Any]]:
        """The DRA driver's ResourceSlices (every node's pool): which cores each node offers."""
        response = self.resource.list_resource_slice(
            field_selector=f"spec.driver={DRIVER_NAME}", _preload_content=False
        )
        return list(_json(response)["items"])

    def list_node_names(self, selector: Mapping[str, str]) -> set[str]:
        """The nodes carrying every label of a pod's ``nodeSelector``: where it may go."""
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        response = client.CoreV1Api(self.resource.api_client).list_node(
            label_selector=text, _preload_content=False
        )
        return {str(n["metadata"]["name"]) for n in _json(response)["items"]}

    def list_all_claims(self) -> list[dict[str, Any]]:
        """The ResourceClaims of every namespace: which cores are taken, by anyone."""
        response = self.resource.list_resource_claim_for_all_namespaces(_preload_content=False)
        return list(_json(response)["items"])


def template_owner_uid(obj: Mapping[str, Any]) -> str | None:
    return _controller(obj)[0]
