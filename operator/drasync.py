"""One reconcile's DRA step: the workload's ResourceClaimTemplates and its pods' allocated cores.

Called by ``controller.Reconciler`` after the Service.  In DRA mode each distinct pod size gets
its template (created when missing, a name taken by another owner refused as ``NotOwned``); a
template no planned pod uses is deleted once no roll is under way (the old pods' claims came
from it).  In device-plugin mode nothing is read unless the status says the workload was in DRA
mode or lists templates left (they are then removed), so clusters without DRA see no extra call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from neuron_operator.api import ALLOCATION_DRA, Workload
from neuron_operator.claimkube import API_ERRORS, TemplateRefusedError, template_owner_uid
from neuron_operator.claims import (
    TEMPLATE_KIND,
    allocated_cores,
    build_template,
    surplus_templates,
    template_name,
    template_sizes,
)
from neuron_operator.pods import LABEL_MANAGED_BY, MANAGER, owner_reference, selector_labels
from neuron_operator.refusals import Refusal

log = logging.getLogger(__name__)


class ClaimCalls(Protocol):
    def ensure_claim_template(self, body: Mapping[str, Any], owner_uid: str) -> bool: ...
    def list_claim_templates(self, namespace: str, workload: str) -> list[dict[str, Any]]: ...
    def delete_claim_template(self, namespace: str, name: str) -> bool: ...
    def list_claims(self, namespace: str, workload: str) -> list[dict[str, Any]]: ...


@dataclass
class DraOutcome:
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    allocated: list[dict[str, Any]] | None = None  # None: unknown (not DRA, or the read failed)
    templates: list[str] | None = None  # the owned templates left; None: not read


def template_bodies(workload: Workload, pod_cores: Sequence[int]) -> list[dict[str, Any]]:
    labels = {**selector_labels(workload.name), LABEL_MANAGED_BY: MANAGER}
    owner = owner_reference(workload) if workload.uid else None
    return [build_template(workload, n, labels, owner) for n in template_sizes(pod_cores)]


def sync(
    kube: ClaimCalls,
    workload: Workload,
    *,
    allocation: str,
    was_dra: bool,  # the status lists templates: they go once no pod needs them
    pod_cores: Sequence[int],
    rolling: bool,
    holding: Set[str],
    pods: Sequence[str],
) -> DraOutcome:
    """Create, keep and remove the templates; read the claims' cores for ``pods`` (in order)."""
    out = DraOutcome()
    dra = allocation == ALLOCATION_DRA
    if not dra and not was_dra:
        return out
    namespace, uid = workload.namespace, workload.uid or ""
    wanted = [template_name(workload.name, n) for n in template_sizes(pod_cores)] if dra else []
    if TEMPLATE_KIND in holding:
        return out
    if dra:
        for body in template_bodies(workload, pod_cores):
            try:
                if kube.ensure_claim_template(body, uid):
                    out.created.append(body["metadata"]["name"])
            except TemplateRefusedError as error:
                out.refusals.append(error.refusal)
                break  # the next would be refused alike
    try:
        owned = [
            str(t["metadata"]["name"])
            for t in kube.list_claim_templates(namespace, workload.name)
            if template_owner_uid(t) == uid
        ]
        out.templates = sorted(owned)
        for name in surplus_templates(owned, wanted, rolling=rolling):
            if kube.delete_claim_template(namespace, name):
                out.deleted.append(name)
            out.templates.remove(name)
    except TemplateRefusedError as error:
        out.refusals.append(error.refusal)
    except API_ERRORS as error:  # the list: retried at the next reconcile
        log.warning("%s/%s: listing ResourceClaimTemplates: %s", namespace, workload.name, error)
    if dra:
        try:
            out.allocated = allocated_cores(kube.list_claims(namespace, workload.name), pods)
        except API_ERRORS as error:
            log.warning("%s/%s: listing ResourceClaims: %s", namespace, workload.name, error)
    return out
