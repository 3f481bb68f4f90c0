"""``neuron-operator run``: start kopf's watches, the leader Lease, the resync loop and metrics.

Every flag has an environment variable, because in a pod the chart sets env while a developer
running out of cluster types flags; both appear in ``--help``.  kopf itself runs in standalone
mode: exclusion between replicas is the Lease's job (see ``leader.py``), and kopf's own event
posting is off because the reconciler records its Events itself (``kube.post_event``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from neuron_cores.flags import Flag, add_flags, boolean, log_format_flag, log_level_flag, number
from neuron_operator import api
from neuron_operator.controller import Backoff, Reconciler, TimerSchedule
from neuron_operator.kube import API_ERRORS

log = logging.getLogger(__name__)

EXIT_USAGE = 2
KOPF_OBJECTS_LOGGER = "kopf.objects"


def _policy_value(parse: Any) -> Any:
    """An argparse ``type`` that shows the parser's own message for a bad policy value."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    check.__name__ = parse.__name__
    return check


RUN_FLAGS = [
    Flag(
        "--kubeconfig",
        "KUBECONFIG",
        "kubeconfig file",
        shown_default="in-cluster config, then ~/.kube/config",
    ),
    Flag(
        "--namespace",
        "NEURON_OPERATOR_NAMESPACES",
        "namespace to watch; repeat for several (the variable: comma-separated)",
        many=True,
        metavar="NAMESPACE",
        shown_default="all namespaces",
        options={"dest": "namespaces"},
    ),
    Flag(
        "--leader-election",
        "NEURON_OPERATOR_LEADER_ELECTION",
        "take a Lease so only one replica acts; alone it means true, or give true/false "
        "(false only for a single local process)",
        True,
        parse=boolean,
        metavar="BOOL",
        options={"nargs": "?", "const": True},
    ),
    Flag(
        "--lease-name",
        "NEURON_OPERATOR_LEASE_NAME",
        "name of the coordination.k8s.io Lease the replicas share: the peering name",
        "neuron-operator",
        aliases=("--peering",),
    ),
    Flag(
        "--lease-namespace",
        "NEURON_OPERATOR_LEASE_NAMESPACE",
        "namespace of the Lease",
        shown_default="the pod's namespace, else $POD_NAMESPACE, else default",
    ),
    Flag(
        "--identity",
        "NEURON_OPERATOR_IDENTITY",
        "this replica's name in the Lease",
        shown_default="hostname-pid",
    ),
    Flag(
        "--lease-seconds",
        "NEURON_OPERATOR_LEASE_SECONDS",
        "how long a Lease lasts without renewal",
        15,
        parse=number(int, 1),
    ),
    Flag(
        "--renew-seconds",
        "NEURON_OPERATOR_RENEW_SECONDS",
        "how often the leader renews, and standbys retry",
        5.0,
        parse=number(float, 0.1),
    ),
    Flag(
        "--resync-seconds",
        "NEURON_OPERATOR_RESYNC_SECONDS",
        "period of the full level-based resync of every NeuronWorkload",
        30.0,
        parse=number(float, 1),
    ),
    Flag(
        "--backoff-max-seconds",
        "NEURON_OPERATOR_BACKOFF_MAX_SECONDS",
        "longest wait before retrying a write the API server refused (the wait doubles from "
        "1 s after each refusal)",
        300.0,
        parse=number(float, 1),
    ),
    Flag(
        "--workers",
        "NEURON_OPERATOR_WORKERS",
        "threads reconciling NeuronWorkloads, each a different one at a time; events coalesce "
        "into one pending reconcile per NeuronWorkload",
        2,
        parse=number(int, 1, 64),
    ),
    Flag(
        "--metrics-port",
        "NEURON_OPERATOR_METRICS_PORT",
        "port of the HTTP endpoint serving /metrics (Prometheus) and /healthz; 0 disables it",
        8080,
        parse=number(int, 0, 65535),
    ),
    Flag(
        "--metrics-address",
        "NEURON_OPERATOR_METRICS_ADDRESS",
        "address the metrics endpoint binds",
        "0.0.0.0",
    ),
    log_format_flag("NEURON_OPERATOR_LOG_FORMAT"),
    log_level_flag("NEURON_OPERATOR_LOG_LEVEL"),
    Flag(
        "--allowed-volume-types",
        "NEURON_OPERATOR_ALLOWED_VOLUME_TYPES",
        "volume types a NeuronWorkload's pods may use, comma-separated, from "
        f"{', '.join(t for t in api.VOLUME_TYPES if t != api.HOST_PATH)}",
        ",".join(api.DEFAULT_VOLUME_TYPES),
        parse=_policy_value(api.parse_volume_types),
        keep_empty=True,
    ),
    Flag(
        "--allowed-host-paths",
        "NEURON_OPERATOR_ALLOWED_HOST_PATHS",
        "host folders a hostPath volume may name (each with everything below it, mounted "
        "read-only), comma-separated; empty refuses hostPath",
        "",
        parse=_policy_value(api.parse_host_paths),
        keep_empty=True,
    ),
]


def _default_lease_namespace() -> str:
    mounted = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.path.exists(mounted):
        with open(mounted, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def add_run_command(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="reconcile NeuronWorkloads in a cluster",
        description="Watch NeuronWorkloads and their pods and keep the planned pods running. "
        "Each flag's environment variable and default are given in brackets; the flag wins.",
    )
    add_flags(parser, RUN_FLAGS)
    parser.add_argument(
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--standalone",
        dest="leader_election",
        action="store_false",
        help="same as --leader-election=false: act without a Lease (one local process only)",
    )
    parser.set_defaults(func=run_command)


def _resync_loop(
    reconciler: Reconciler,
    namespaces: Sequence[str],
    interval: float,
    stop: threading.Event,
    wake: threading.Event,
) -> None:
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


def check_run_args(args: argparse.Namespace) -> list[str]:
    """What no one flag can check: the renew interval against the lease."""
    problems = []
    if args.leader_election and args.renew_seconds >= args.lease_seconds:
        problems.append(
            f"--renew-seconds {args.renew_seconds:g} must be shorter than --lease-seconds "
            f"{args.lease_seconds}; the leader must renew before its Lease runs out"
        )
    return problems


def configure_logging(level: str, log_format: str) -> None:
    """kopf's log setup, less its "Handler ... succeeded" line per watch event below debug: one
    line per pod event is thousands of lines (and their formatting) in a roll of large
    workloads, and says nothing the operator's own lines do not.  kopf's warnings stay."""
    import kopf  # noqa: PLC0415 (`run` only)

    kopf.configure(
        verbose=level == "debug",
        quiet=level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    if level == "error":  # kopf's quiet is warning
        logging.getLogger().setLevel(logging.ERROR)
    objects = logging.getLogger(KOPF_OBJECTS_LOGGER)
    objects.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _client_configuration(kubeconfig: str | None) -> Any:
    """--kubeconfig's file; without one, the in-cluster config, then ~/.kube/config."""
    from kubernetes import client, config  # noqa: PLC0415 (`run` only)

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


def run_command(args: argparse.Namespace) -> int:
    problems = check_run_args(args)
    if problems:
        for problem in problems:
            print(f"neuron-operator run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    import kopf  # noqa: PLC0415 (`run` only)
    from kubernetes import client, config  # noqa: PLC0415 (`run` only)

    from neuron_operator import handlers  # noqa: PLC0415 (`run` only)
    from neuron_operator.httpserver import create_server  # noqa: PLC0415 (`run` only)
    from neuron_operator.kube import Kube  # noqa: PLC0415 (`run` only)
    from neuron_operator.leader import LeaseElector  # noqa: PLC0415 (`run` only)

    load_configuration = functools.partial(_client_configuration, args.kubeconfig)
    try:
        api_client = client.ApiClient(load_configuration())
    except (config.ConfigException, OSError) as error:
        where = args.kubeconfig or "in-cluster config, then ~/.kube/config"
        print(
            f"neuron-operator run: cannot load a Kubernetes client configuration from {where}: "
            f"{error}; pass --kubeconfig (or KUBECONFIG) naming a valid kubeconfig file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging(args.log_level, args.log_format)
    namespaces = args.namespaces or []
    api.configure_volume_policy(
        api.VolumePolicy(args.allowed_volume_types, args.allowed_host_paths)
    )
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    stop, wake = threading.Event(), threading.Event()
    elector = None
    if args.leader_election:
        elector = LeaseElector(
            api_client,
            namespace=args.lease_namespace or _default_lease_namespace(),
            name=args.lease_name,
            identity=identity,
            lease_seconds=args.lease_seconds,
            renew_seconds=args.renew_seconds,
            on_elected=wake.set,
        )
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
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    threads = [
        threading.Thread(
            target=_resync_loop,
            args=(reconciler, namespaces, args.resync_seconds, stop, wake),
            name="resync",
            daemon=True,
        )
    ]
    if elector is not None:
        threads.append(
            threading.Thread(target=elector.run, args=(stop,), name="lease", daemon=True)
        )
    reconciler.start()
    for thread in threads:
        thread.start()
    server = None
    if args.metrics_port:
        try:
            server = create_server(
                args.metrics_address, args.metrics_port, lambda: all(t.is_alive() for t in threads)
            )
        except OSError as error:
            stop.set()
            wake.set()
            reconciler.close()
            print(
                f"neuron-operator run: cannot serve metrics on {args.metrics_address}:"
                f"{args.metrics_port}: {error}; choose a free --metrics-port (0 disables it)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        log.info("metrics and health on %s:%d", args.metrics_address, args.metrics_port)
    log.info("neuron-operator %s starting; namespaces: %s", identity, namespaces or "all")
    try:
        kopf.run(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    finally:
        if server is not None:
            server.shutdown()
        retries.close()
        stop.set()
        wake.set()
        reconciler.close()
        for thread in threads:
            thread.join(timeout=10)
    return 0
