"""kopf wiring: which watch events lead to a reconcile.

kopf's create/update handlers are edge-triggered and keep progress on the object; a controller
that must also notice a pod deleted by hand wants level-based behaviour instead.  So only
``on.event`` handlers are used (no finalizers, no progress annotations): any event of a
NeuronWorkload, and any event of a pod it manages, reconciles that NeuronWorkload from what exists
now.  The periodic resync in ``runner.py`` covers events missed while no replica led.
Handlers are short: they find the object and hand it to the ``Reconciler``.
"""

from __future__ import annotations

from typing import Any

import kopf

from neuron_operator.api import GROUP, PLURAL, VERSION
from neuron_operator.controller import Reconciler
from neuron_operator.kube import controller_name
from neuron_operator.pods import LABEL_MANAGED_BY, MANAGER

DELETED = "DELETED"


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register the watch handlers of one operator on ``registry``."""

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def workload_event(*, type: str | None, body: kopf.Body, **_: Any) -> None:
        if type != DELETED:
            reconciler.reconcile(body)

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER}, registry=registry)
    def pod_event(*, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = controller_name(body)
        if owner is not None and namespace is not None:
            reconciler.reconcile_by_name(namespace, owner)
