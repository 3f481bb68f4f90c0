"""Why a child object (a pod, the Service) could not be written, in words a person can act on.

Every error the API server (or the client, before sending) gives for a write of a child object is
classified here, in one place, into a ``Refusal``: a reason from ``conditions.py``, the object,
the API server's own message (bounded), what to do, and whether retrying can help by itself.  The
reconciler puts refusals on status and in a Warning Event and backs off; nothing here does I/O.

The operator also refuses, before calling the API, a pod it can predict is too large: the API
server takes at most 3 MiB per request and etcd stores at most 1.5 MiB per object (above it the
API server answers 500, see ``_TOO_LARGE``), annotations may total at most 256 KiB, and the
kernel refuses to start a process whose environment holds a string over 128 KiB (MAX_ARG_STRLEN),
so a pod above these would fail later, or worse, be admitted and never start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neuron_operator import conditions as c

# Bounds of what the operator sends (see the module docstring for where each comes from).
MAX_POD_BYTES = 1024 * 1024
MAX_ANNOTATION_BYTES = 256 * 1024
MAX_ENV_STRING_BYTES = 128 * 1024
# How much of an API server's message is quoted on status and in Events.
MAX_QUOTE = 600

TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# What kube-apiserver 1.36 answers for a pod above what etcd takes (measured on the local
# cluster): 1.6 MB "500 etcdserver: request is too large", 2.5 MB "500 rpc error: code =
# ResourceExhausted desc = trying to send message larger than max", 3.3 MB "413 Request entity
# too large: limit is 3145728".
_TOO_LARGE = ("request is too large", "message larger than max")

_ADVICE = {
    c.REASON_INVALID: "fix the pod settings in spec (resources, env, volumes, volumeMounts, "
    "tolerations, nodeSelector, image)",
    c.REASON_QUOTA_EXCEEDED: "raise the namespace's ResourceQuota, or ask for less "
    "(spec.replicas, spec.resources, fewer pods through spec.cores or isolation: Shared)",
    c.REASON_FORBIDDEN: "the namespace's admission (Pod Security level, policies) or the "
    "operator's RBAC refuses it: change spec to fit the namespace's rules, or ask its admin",
    c.REASON_POD_TOO_LARGE: "give fewer model copies per pod (a larger spec.cores, "
    "isolation: Process) or shorter model names and paths",
    c.REASON_UNAUTHORIZED: "the operator's credentials were refused: check its "
    "ServiceAccount token or --kubeconfig",
    c.REASON_REFUSED: "see the API server's message",
    c.REASON_API_UNAVAILABLE: "the operator retries with backoff",
}


@dataclass(frozen=True)
class Refusal:
    """One child object the operator could not (or would not) write, and why."""

    reason: str
    kind: str
    name: str
    message: str
    advice: str = ""
    transient: bool = False

    def describe(self) -> str:
        return f"{self.message}; {self.advice}" if self.advice else self.message


def quote(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def api_message(body: object, fallback: str) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else ``fallback``."""
    try:
        document = json.loads(body if isinstance(body, str | bytes) else "")
    except ValueError:
        return fallback
    message = document.get("message") if isinstance(document, dict) else None
    return str(message) if message else fallback


def classify_status(status: int | None, message: str, kind: str, name: str) -> Refusal:
    """The refusal an HTTP status and the API server's message stand for."""
    lowered = message.lower()
    if status in (400, 422):
        reason = c.REASON_INVALID
    elif status == 403 and "exceeded quota" in lowered:
        reason = c.REASON_QUOTA_EXCEEDED
    elif status == 403 and "status unknown for quota" in lowered:
        reason = c.REASON_API_UNAVAILABLE  # a new ResourceQuota not yet counted: soon answered
    elif status == 403:
        reason = c.REASON_FORBIDDEN
    elif status == 401:
        reason = c.REASON_UNAUTHORIZED
    elif status == 413 or any(text in lowered for text in _TOO_LARGE):
        reason = c.REASON_POD_TOO_LARGE
    elif status is None or status in TRANSIENT_STATUSES or status >= 500:
        reason = c.REASON_API_UNAVAILABLE
    else:
        reason = c.REASON_REFUSED
    transient = reason == c.REASON_API_UNAVAILABLE
    shown = f"the API server refused {kind.lower()} {name} ({status}): {quote(message)}"
    return Refusal(reason, kind, name, shown, _ADVICE[reason], transient)


def classify_exception(error: BaseException, kind: str, name: str) -> Refusal:
    """Any error from writing a child object: an ``ApiException`` (it has ``status`` and
    ``body``), a client-side ``ValueError``/``TypeError`` (serialising or validating the request
    before it is sent: a bad spec), or a connection error (transient)."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status > 0:
        message = api_message(getattr(error, "body", None), str(getattr(error, "reason", error)))
        return classify_status(status, message, kind, name)
    if isinstance(error, ValueError | TypeError):
        message = f"the Kubernetes client refused {kind.lower()} {name}: {quote(str(error))}"
        return Refusal(c.REASON_INVALID, kind, name, message, _ADVICE[c.REASON_INVALID])
    detail = quote(str(error) or type(error).__name__)
    message = f"writing {kind.lower()} {name}: the API server could not be reached: {detail}"
    return Refusal(
        c.REASON_API_UNAVAILABLE, kind, name, message, _ADVICE[c.REASON_API_UNAVAILABLE], True
    )


def not_owned(kind: str, name: str, namespace: str, owner: str | None) -> Refusal:
    """A child's deterministic name is taken by an object this NeuronWorkload does not control."""
    held = f"controlled by {owner}" if owner else "not controlled by any NeuronWorkload"
    return Refusal(
        c.REASON_NOT_OWNED,
        kind,
        name,
        f"{kind} {namespace}/{name} exists and is {held}; the operator neither adopts nor "
        "changes an object it does not own",
        f"delete or rename that {kind}, or give the NeuronWorkload another name",
    )


def _bytes(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


def pod_size_refusal(pod: Mapping[str, Any]) -> Refusal | None:
    """A ``PodTooLarge`` refusal when ``pod`` is beyond what the operator may send, else None."""
    name = str(pod["metadata"]["name"])
    advice = _ADVICE[c.REASON_POD_TOO_LARGE]
    size = len(json.dumps(pod, separators=(",", ":")).encode())
    if size > MAX_POD_BYTES:
        message = (
            f"pod {name} would be {_bytes(size)} of JSON, above the {_bytes(MAX_POD_BYTES)} the "
            "operator sends (the API server stores at most 1.5 MiB per object)"
        )
        return Refusal(c.REASON_POD_TOO_LARGE, "Pod", name, message, advice)
    annotations = pod["metadata"].get("annotations") or {}
    total = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
    if total > MAX_ANNOTATION_BYTES:
        message = (
            f"the annotations of pod {name} would total {_bytes(total)}, above the API "
            f"server's limit of {_bytes(MAX_ANNOTATION_BYTES)}"
        )
        return Refusal(c.REASON_POD_TOO_LARGE, "Pod", name, message, advice)
    for container in pod["spec"].get("containers") or []:
        for item in container.get("env") or []:
            length = len(f"{item.get('name')}={item.get('value', '')}".encode()) + 1
            if length > MAX_ENV_STRING_BYTES:
                message = (
                    f"env {item.get('name')} of pod {name} would be {_bytes(length)}, above the "
                    f"{_bytes(MAX_ENV_STRING_BYTES)} the kernel allows one environment string "
                    "(the container could not start)"
                )
                return Refusal(c.REASON_POD_TOO_LARGE, "Pod", name, message, advice)
    return None
