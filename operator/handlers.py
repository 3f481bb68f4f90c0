"""kopf wiring: which watch events lead to a reconcile.

kopf's create/update handlers are edge-triggered and keep progress on the object; a controller
that must also notice a pod deleted by hand wants level-based behaviour instead.  So only
``on.event`` handlers are used (no finalizers, no progress annotations): any event of a
NeuronWorkload, and any event of a pod it manages, reconciles that NeuronWorkload from what exists
now.  The periodic resync in ``operate.py`` covers events missed while no replica led.

Handlers are ``async`` and only *request* a reconcile (``Reconciler.request``, which queues it,
coalescing, for the reconciler's worker threads): they return at once, so kopf holds no task, no
pod body and no thread per event while a reconcile runs, and has nothing to cancel at SIGTERM.
A synchronous handler would instead wait in kopf's thread pool for each event's reconcile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from neuron_operator.api import GROUP, PLURAL, VERSION
from neuron_operator.controller import Reconciler
from neuron_operator.kube import controller_name
from neuron_operator.pods import LABEL_MANAGED_BY, MANAGER

DELETED = "DELETED"


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from a loaded ``kubernetes.client.Configuration``."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, header or None)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    load_configuration: Callable[[], Any],
) -> None:
    """Register the login and watch handlers of one operator on ``registry``.

    ``load_configuration`` (re)loads the client configuration the reconciler uses, so kopf logs
    in with the same identity (the ``--kubeconfig`` flag, else in-cluster), and again after a 401
    when an in-cluster token has rotated.
    """

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_configuration())

    if reconciler.queue is None:
        raise ValueError(
            "the reconciler needs worker threads (Reconciler(..., workers=N)) to be driven by "
            "watch events; without, each event would reconcile inside kopf's event loop"
        )

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def workload_event(
        *, type: str | None, name: str | None, namespace: str | None, **_: Any
    ) -> None:
        if type != DELETED and name is not None and namespace is not None:
            reconciler.request(namespace, name)

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER}, registry=registry)
    async def pod_event(*, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = controller_name(body)
        if owner is not None and namespace is not None:
            reconciler.request(namespace, owner)
