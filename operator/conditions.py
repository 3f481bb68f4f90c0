"""Condition types, reasons and the one helper that updates a condition list.

Reasons are constants in one place so the status, the Events and the tests use the same words.
``lastTransitionTime`` only moves when a condition's status changes, as Kubernetes API
conventions ask, so writing the same status twice is a no-op the reconcile loop can detect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
INVALID_SPEC = "InvalidSpec"
UNSCHEDULABLE = "Unschedulable"
# True while the API server refuses a child object (a pod, the Service), or the operator refuses
# to send one (too large) or to adopt one it does not own; the reason says which, and what to do.
REFUSED = "Refused"
CONDITION_TYPES = (READY, PROGRESSING, INVALID_SPEC, UNSCHEDULABLE, REFUSED)

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

# Reasons (CamelCase, as the API conventions ask).
REASON_ALL_READY = "AllReplicasReady"
REASON_NOT_READY = "ReplicasNotReady"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_ROLLING = "RollingUpdate"
REASON_CREATING = "CreatingPods"
REASON_REMOVING = "RemovingPods"
REASON_WAITING = "WaitingForPods"
REASON_COMPLETE = "Complete"
REASON_SPEC_VALID = "SpecValid"
REASON_SPEC_INVALID = "SpecInvalid"
REASON_INSUFFICIENT_CORES = "InsufficientNeuronCores"
# DRA: no node has a free run of a pod's block size (it may have that many scattered free cores)
REASON_NO_CONTIGUOUS_RUN = "NoContiguousRun"
REASON_POD_UNSCHEDULABLE = "PodsUnschedulable"
REASON_SCHEDULED = "PodsScheduled"
REASON_ACCEPTED = "Accepted"
# Why a child object was refused (``refusals.py`` classifies every error into one of these).
REASON_FORBIDDEN = "Forbidden"  # 403: Pod Security, an admission policy, RBAC
REASON_QUOTA_EXCEEDED = "QuotaExceeded"  # 403 saying "exceeded quota"
REASON_POD_TOO_LARGE = "PodTooLarge"  # 413, or predicted by the operator before sending
REASON_INVALID = "InvalidSpec"  # 400/422, or the client refused to serialise the request
REASON_NOT_OWNED = "NotOwned"  # the name is taken by an object this workload does not control
REASON_UNAUTHORIZED = "Unauthorized"  # 401: the operator's own credentials
REASON_REFUSED = "Refused"  # any other 4xx
REASON_API_UNAVAILABLE = "APIUnavailable"  # 409/429/5xx or no connection: retried, not reported

# Event reasons.
EVENT_CREATED = "CreatedPods"
EVENT_DELETED = "DeletedPods"
EVENT_SERVICE = "CreatedService"
EVENT_SERVICE_UPDATED = "UpdatedService"  # its ports followed spec.container.ports
EVENT_INVALID = "InvalidSpec"
EVENT_UNSCHEDULABLE = "Unschedulable"
# A refusal's Event carries the refusal's reason (REASON_FORBIDDEN, ...).


def condition(
    type_: str, status: str, reason: str, message: str, generation: int
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """New conditions, keeping each one's lastTransitionTime unless its status changed."""
    before = {c.get("type"): c for c in previous or ()}
    merged: list[dict[str, Any]] = []
    for item in new:
        old = before.get(item["type"])
        kept = old is not None and old.get("status") == item["status"]
        since = old.get("lastTransitionTime") if kept and old is not None else None
        merged.append({**item, "lastTransitionTime": since or now})
    return merged


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)
