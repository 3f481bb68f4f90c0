"""What ``neuron-operator run`` starts: kopf's watches, the leader Lease, the resync loop, metrics.

kopf runs in standalone mode: exclusion between replicas is the Lease's job (see ``leader.py``),
and kopf's own event posting is off because the reconciler records its Events itself
(``kube.post_event``).  ``runner`` parses the flags and imports this module only for ``run``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from http.server import ThreadingHTTPServer
from typing import Any

import kopf
from kubernetes import client, config

from neuron_operator import api, handlers
from neuron_operator.controller import Backoff, Reconciler, TimerSchedule
from neuron_operator.httpserver import create_server
from neuron_operator.kube import API_ERRORS, Kube
from neuron_operator.leader import LeaseElector

log = logging.getLogger(__name__)

KOPF_OBJECTS_LOGGER = "kopf.objects"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class StartError(Exception):
    """The operator cannot start as asked; the message says what to change."""


def run(args: argparse.Namespace) -> int:
    """Run until kopf stops (SIGTERM, SIGINT); every thread and the server end with it."""
    load_configuration = functools.partial(client_configuration, args.kubeconfig)
    api_client = _api_client(load_configuration, args.kubeconfig)
    configure_logging(args.log_level, args.log_format)
    api.configure_volume_policy(
        api.VolumePolicy(args.allowed_volume_types, args.allowed_host_paths)
    )
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    namespaces = args.namespaces or []
    stop, wake = threading.Event(), threading.Event()
    elector = _elector(args, api_client, identity, wake) if args.leader_election else None
    retries = TimerSchedule()
    reconciler = Reconciler(
        Kube(api_client, instance=identity),
        is_leader=elector.is_leader if elector else lambda: True,
        backoff=Backoff(cap=args.backoff_max_seconds),
        schedule=retries,
        workers=args.workers,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, load_configuration)
    threads = _background_threads(
        reconciler,
        elector,
        namespaces=namespaces,
        resync_seconds=args.resync_seconds,
        stop=stop,
        wake=wake,
    )

    def shut_down() -> None:
        retries.close()
        stop.set()
        wake.set()
        reconciler.close()
        for thread in threads:
            thread.join(timeout=10)

    reconciler.start()
    for thread in threads:
        thread.start()
    try:
        server = _metrics_server(args, lambda: all(t.is_alive() for t in threads))
    except StartError:
        shut_down()
        raise
    log.info("neuron-operator %s starting; namespaces: %s", identity, namespaces or "all")
    try:
        kopf.run(
            registry=registry,
            settings=kopf_settings(),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    finally:
        if server is not None:
            server.shutdown()
        shut_down()
    return 0


def client_configuration(kubeconfig: str | None) -> Any:
    """--kubeconfig's file; without one, the in-cluster config, then ~/.kube/config."""
    configuration = client.Configuration()
    load_kube_config: Any = config.load_kube_config
    load_incluster_config: Any = config.load_incluster_config
    if kubeconfig:
        load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            load_kube_config(client_configuration=configuration)
    return configuration


def _api_client(load_configuration: Callable[[], Any], kubeconfig: str | None) -> Any:
    try:
        return client.ApiClient(load_configuration())
    except (config.ConfigException, OSError) as error:
        where = kubeconfig or "in-cluster config, then ~/.kube/config"
        raise StartError(
            f"cannot load a Kubernetes client configuration from {where}: {error}; pass "
            "--kubeconfig (or KUBECONFIG) naming a valid kubeconfig file"
        ) from None


def configure_logging(level: str, log_format: str) -> None:
    """kopf's log setup, less its "Handler ... succeeded" line per watch event below debug: one
    line per pod event is thousands of lines (and their formatting) in a roll of large
    workloads, and says nothing the operator's own lines do not.  kopf's warnings stay."""
    kopf.configure(
        verbose=level == "debug",
        quiet=level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    if level == "error":  # kopf's quiet is warning
        logging.getLogger().setLevel(logging.ERROR)
    objects = logging.getLogger(KOPF_OBJECTS_LOGGER)
    objects.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # the reconciler posts its own Events
    settings.scanning.disabled = True  # the CRD is the chart's; no need to scan for it
    settings.watching.server_timeout = 300
    return settings


def default_lease_namespace() -> str:
    """The pod's own namespace (its ServiceAccount mount, else POD_NAMESPACE), else default."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def _elector(
    args: argparse.Namespace, api_client: Any, identity: str, wake: threading.Event
) -> LeaseElector:
    return LeaseElector(
        api_client,
        namespace=args.lease_namespace or default_lease_namespace(),
        name=args.lease_name,
        identity=identity,
        lease_seconds=args.lease_seconds,
        renew_seconds=args.renew_seconds,
        on_elected=wake.set,
    )


def _background_threads(
    reconciler: Reconciler,
    elector: LeaseElector | None,
    *,
    namespaces: Sequence[str],
    resync_seconds: float,
    stop: threading.Event,
    wake: threading.Event,
) -> list[threading.Thread]:
    """The resync loop, and the Lease's loop when there is an election (not started yet)."""
    threads = [
        threading.Thread(
            target=resync_loop,
            args=(reconciler, namespaces, resync_seconds, stop, wake),
            name="resync",
            daemon=True,
        )
    ]
    if elector is not None:
        threads.append(
            threading.Thread(target=elector.run, args=(stop,), name="lease", daemon=True)
        )
    return threads


def _metrics_server(
    args: argparse.Namespace, healthy: Callable[[], bool]
) -> ThreadingHTTPServer | None:
    """/metrics and /healthz on --metrics-port, serving in a thread; None when the port is 0."""
    if not args.metrics_port:
        return None
    try:
        server = create_server(args.metrics_address, args.metrics_port, healthy)
    except OSError as error:
        raise StartError(
            f"cannot serve metrics on {args.metrics_address}:{args.metrics_port}: {error}; "
            "choose a free --metrics-port (0 disables it)"
        ) from None
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics and health on %s:%d", args.metrics_address, args.metrics_port)
    return server


def resync_loop(
    reconciler: Reconciler,
    namespaces: Sequence[str],
    interval: float,
    stop: threading.Event,
    wake: threading.Event,
) -> None:
    """Reconcile every NeuronWorkload each ``interval`` (and when woken: a new leader)."""
    while not stop.is_set():
        wake.wait(interval)
        wake.clear()
        if stop.is_set():
            return
        try:
            count = reconciler.resync(namespaces)
            log.debug("resync reconciled %d NeuronWorkloads", count)
        except API_ERRORS as error:  # the API is away: one line, and again next period
            log.warning("resync could not list NeuronWorkloads: %s; again in %gs", error, interval)
        except Exception:  # the loop must outlive any one failure; it retries next period
            log.exception("resync failed")
