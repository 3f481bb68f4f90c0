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
CONDITION_TYPES = (READY, PROGRESSING, INVALID_SPEC, UNSCHEDULABLE)

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
REASON_POD_UNSCHEDULABLE = "PodsUnschedulable"
REASON_SCHEDULED = "PodsScheduled"

# Event reasons.
EVENT_CREATED = "CreatedPods"
EVENT_DELETED = "DeletedPods"
EVENT_SERVICE = "CreatedService"
EVENT_INVALID = "InvalidSpec"
EVENT_UNSCHEDULABLE = "Unschedulable"


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
