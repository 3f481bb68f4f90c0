"""``neuron-operator run``: start kopf's watches, the leader Lease, the resync loop and metrics.

Every flag has an environment variable, because in a pod the chart sets env while a developer
running out of cluster types flags; both appear in ``--help``.  kopf itself runs in standalone
mode: exclusion between replicas is the Lease's job (see ``leader.py``), and kopf's own event
posting is off because the reconciler records its Events itself (``kube.post_event``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from neuron_operator import api
from neuron_operator.controller import Backoff, Reconciler, TimerSchedule
from neuron_operator.kube import API_ERRORS

log = logging.getLogger(__name__)

DEFAULTS = {
    "NEURON_OPERATOR_NAMESPACES": "",
    "NEURON_OPERATOR_LEASE_NAME": "neuron-operator",
    "NEURON_OPERATOR_LEASE_SECONDS": "15",
    "NEURON_OPERATOR_RENEW_SECONDS": "5",
    "NEURON_OPERATOR_RESYNC_SECONDS": "30",
    "NEURON_OPERATOR_METRICS_PORT": "8080",
    "NEURON_OPERATOR_METRICS_ADDRESS": "0.0.0.0",
    "NEURON_OPERATOR_LOG_FORMAT": "text",
    "NEURON_OPERATOR_LOG_LEVEL": "info",
    "NEURON_OPERATOR_LEADER_ELECTION": "true",
    "NEURON_OPERATOR_ALLOWED_VOLUME_TYPES": ",".join(api.DEFAULT_VOLUME_TYPES),
    "NEURON_OPERATOR_ALLOWED_HOST_PATHS": "",
    "NEURON_OPERATOR_BACKOFF_MAX_SECONDS": "300",
    "NEURON_OPERATOR_WORKERS": "2",
}


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning")
EXIT_USAGE = 2
KOPF_OBJECTS_LOGGER = "kopf.objects"


def _env(name: str) -> str:
    return os.environ.get(name, DEFAULTS.get(name, ""))


def _namespaces(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _default_lease_namespace() -> str:
    mounted = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.path.exists(mounted):
        with open(mounted, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def _number(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    """An argparse ``type`` for a number in [low, high]; argparse names the flag on error.

    Defaults are passed as the env var's *string*, so argparse runs them through this too and a
    bad environment value is refused as clearly as a bad flag, instead of a traceback.
    """
    bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; give a whole number {bounds}"
                if kind is int
                else f"{text!r} is not a number; give a number {bounds}"
            ) from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; give a number {bounds}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _flag_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def add_run_command(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="reconcile NeuronWorkloads in a cluster",
        description="Watch NeuronWorkloads and their pods and keep the planned pods running. "
        "Each flag's environment variable is given in brackets.",
    )
    add = parser.add_argument
    add(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig file; absent: in-cluster config, then ~/.kube/config [KUBECONFIG]",
    )
    add(
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    add(
        "--namespace",
        dest="namespaces",
        action="append",
        help="namespace to watch; repeat for several; absent: all namespaces "
        "[NEURON_OPERATOR_NAMESPACES, comma-separated]",
    )
    add(
        "--leader-election",
        type=_flag_bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        default=_env("NEURON_OPERATOR_LEADER_ELECTION"),
        help="take a Lease so only one replica acts; alone it means true, or give true/false "
        "(false only for a single local process) [NEURON_OPERATOR_LEADER_ELECTION, default true]",
    )
    add(
        "--standalone",
        dest="leader_election",
        action="store_false",
        help="same as --leader-election=false: act without a Lease (one local process only)",
    )
    add(
        "--lease-name",
        "--peering",
        default=_env("NEURON_OPERATOR_LEASE_NAME"),
        help="name of the coordination.k8s.io Lease the replicas share: the peering name "
        "[NEURON_OPERATOR_LEASE_NAME, default neuron-operator]",
    )
    add(
        "--lease-namespace",
        default=os.environ.get("NEURON_OPERATOR_LEASE_NAMESPACE"),
        help="namespace of the Lease; default: the pod's namespace, else $POD_NAMESPACE, else "
        "default [NEURON_OPERATOR_LEASE_NAMESPACE]",
    )
    add(
        "--identity",
        default=os.environ.get("NEURON_OPERATOR_IDENTITY"),
        help="this replica's name in the Lease; default hostname-pid [NEURON_OPERATOR_IDENTITY]",
    )
    add(
        "--lease-seconds",
        type=_number(int, 1),
        default=_env("NEURON_OPERATOR_LEASE_SECONDS"),
        help="how long a Lease lasts without renewal [NEURON_OPERATOR_LEASE_SECONDS, default 15]",
    )
    add(
        "--renew-seconds",
        type=_number(float, 0.1),
        default=_env("NEURON_OPERATOR_RENEW_SECONDS"),
        help="how often the leader renews, and standbys retry "
        "[NEURON_OPERATOR_RENEW_SECONDS, default 5]",
    )
    add(
        "--resync-seconds",
        type=_number(float, 1),
        default=_env("NEURON_OPERATOR_RESYNC_SECONDS"),
        help="period of the full level-based resync of every NeuronWorkload "
        "[NEURON_OPERATOR_RESYNC_SECONDS, default 30]",
    )
    add(
        "--backoff-max-seconds",
        type=_number(float, 1),
        default=_env("NEURON_OPERATOR_BACKOFF_MAX_SECONDS"),
        help="longest wait before retrying a write the API server refused (the wait doubles "
        "from 1 s after each refusal) [NEURON_OPERATOR_BACKOFF_MAX_SECONDS, default 300]",
    )
    add(
        "--workers",
        type=_number(int, 1, 64),
        default=_env("NEURON_OPERATOR_WORKERS"),
        help="threads reconciling NeuronWorkloads, each a different one at a time; events "
        "coalesce into one pending reconcile per NeuronWorkload "
        "[NEURON_OPERATOR_WORKERS, default 2]",
    )
    add(
        "--metrics-port",
        type=_number(int, 0, 65535),
        default=_env("NEURON_OPERATOR_METRICS_PORT"),
        help="port of the HTTP endpoint serving /metrics (Prometheus) and /healthz; 0 disables "
        "it [NEURON_OPERATOR_METRICS_PORT, default 8080]",
    )
    add(
        "--metrics-address",
        default=_env("NEURON_OPERATOR_METRICS_ADDRESS"),
        help="address the metrics endpoint binds "
        "[NEURON_OPERATOR_METRICS_ADDRESS, default 0.0.0.0]",
    )
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("NEURON_OPERATOR_LOG_FORMAT"),
        help="log line format [NEURON_OPERATOR_LOG_FORMAT, default text]",
    )
    add(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("NEURON_OPERATOR_LOG_LEVEL"),
        help="log level [NEURON_OPERATOR_LOG_LEVEL, default info]",
    )
    add(
        "--allowed-volume-types",
        type=_policy_value(api.parse_volume_types),
        default=_env("NEURON_OPERATOR_ALLOWED_VOLUME_TYPES"),
        help="volume types a NeuronWorkload's pods may use, comma-separated, from "
        f"{', '.join(t for t in api.VOLUME_TYPES if t != api.HOST_PATH)} "
        "[NEURON_OPERATOR_ALLOWED_VOLUME_TYPES, default "
        f"{','.join(api.DEFAULT_VOLUME_TYPES)}]",
    )
    add(
        "--allowed-host-paths",
        type=_policy_value(api.parse_host_paths),
        default=_env("NEURON_OPERATOR_ALLOWED_HOST_PATHS"),
        help="host folders a hostPath volume may name (each with everything below it, mounted "
        "read-only), comma-separated; empty refuses hostPath "
        "[NEURON_OPERATOR_ALLOWED_HOST_PATHS, default empty]",
    )
    parser.set_defaults(func=run_command)


def _policy_value(parse: Any) -> Any:
    """An argparse ``type`` that shows the parser's own message for a bad policy value."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    check.__name__ = parse.__name__
    return check


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
    """What argparse cannot see: env-supplied choices (argparse never checks a default against
    ``choices``) and the renew interval against the lease."""
    problems = []
    for value, allowed, env in (
        (args.log_format, LOG_FORMATS, "NEURON_OPERATOR_LOG_FORMAT"),
        (args.log_level, LOG_LEVELS, "NEURON_OPERATOR_LOG_LEVEL"),
    ):
        if value not in allowed:
            problems.append(f"{env}={value!r} is not one of {', '.join(allowed)}; fix or unset it")
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
    import kopf

    kopf.configure(
        verbose=level == "debug",
        quiet=level == "warning",
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    objects = logging.getLogger(KOPF_OBJECTS_LOGGER)
    objects.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def run_command(args: argparse.Namespace) -> int:
    problems = check_run_args(args)
    if problems:
        for problem in problems:
            print(f"neuron-operator run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    import kopf
    from kubernetes import client, config

    from neuron_operator import handlers
    from neuron_operator.httpserver import create_server
    from neuron_operator.kube import Kube
    from neuron_operator.leader import LeaseElector

    def load_configuration() -> Any:
        configuration = client.Configuration()
        load_kube_config: Any = config.load_kube_config
        load_incluster_config: Any = config.load_incluster_config
        if args.kubeconfig:
            load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
        else:
            try:
                load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                load_kube_config(client_configuration=configuration)
        return configuration

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
    namespaces = args.namespaces or _namespaces(_env("NEURON_OPERATOR_NAMESPACES"))
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
