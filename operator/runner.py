"""``neuron-operator run``: its flags, and the checks no one flag can make.

Every flag has an environment variable, because in a pod the chart sets env while a developer
running out of cluster types flags; both appear in ``--help``.  What ``run`` starts (kopf, the
Lease, the resync loop, metrics) is in ``operate``, imported only when ``run`` runs: ``plan``
and ``validate`` start without kopf.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neuron_cores.flags import Flag, add_flags, boolean, log_format_flag, log_level_flag, number
from neuron_operator import api

EXIT_USAGE = 2


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


def check_run_args(args: argparse.Namespace) -> list[str]:
    """What no one flag can check: the renew interval against the lease."""
    problems = []
    if args.leader_election and args.renew_seconds >= args.lease_seconds:
        problems.append(
            f"--renew-seconds {args.renew_seconds:g} must be shorter than --lease-seconds "
            f"{args.lease_seconds}; the leader must renew before its Lease runs out"
        )
    return problems


def run_command(args: argparse.Namespace) -> int:
    problems = check_run_args(args)
    if problems:
        for problem in problems:
            print(f"neuron-operator run: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from neuron_operator import operate  # noqa: PLC0415 (kopf: `run` only, not plan/validate)

    try:
        return operate.run(args)
    except operate.StartError as error:
        print(f"neuron-operator run: {error}", file=sys.stderr)
        return EXIT_USAGE
