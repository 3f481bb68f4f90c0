"""``neuron-localcluster up|down|status|build|demo``: what ``make cluster-up/down/demo`` run.

Why a CLI over the library: the Makefile, a developer's shell and CI all need the same start and
stop, with progress printed as it happens and a non-zero exit naming what failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neuron_cores import CORE_RESOURCE
from neuron_cores.flags import Flag, add_flags, log_level_flag, number
from neuron_cores.logs import configure_logging
from neuron_localcluster import binaries, cache, demo, karpenter, layout, podnet
from neuron_localcluster.cluster import (
    DEFAULT_EMULATED_NODES,
    DEFAULT_KWOK_NODES,
    ClusterError,
    LocalCluster,
    stop_cluster,
)
from neuron_localcluster.layout import ALLOCATIONS, DEVICE_PLUGIN
from neuron_localcluster.startup import ensure_up, progress, usage_lines

log = logging.getLogger("neuron_localcluster")

KWOK_NODES_ENV = "NEURON_GROUPS_KWOK_NODES"
EMULATED_NODES_ENV = "NEURON_GROUPS_EMULATED_NODES"
LOG_LEVEL_ENV = "NEURON_GROUPS_LOG_LEVEL"
AUTOSCALER_ENV = "NEURON_GROUPS_AUTOSCALER"
CONSOLIDATE_AFTER_ENV = "NEURON_GROUPS_CONSOLIDATE_AFTER"
ALLOCATION_ENV = "NEURON_GROUPS_ALLOCATION"
DEMO_TIMEOUT_ENV = "NEURON_GROUPS_DEMO_TIMEOUT"


ENV_HELP = f"""environment variables:
  {layout.STATE_ENV:<30} state folder (same as --state-dir)
  {KWOK_NODES_ENV:<30} kwok nodes (same as --kwok-nodes)
  {EMULATED_NODES_ENV:<30} emulated nodes (same as --emulated-nodes)
  {LOG_LEVEL_ENV:<30} logging level (same as --log-level)
  {AUTOSCALER_ENV:<30} none|karpenter (same as --autoscaler)
  {CONSOLIDATE_AFTER_ENV:<30} Karpenter NodePool consolidateAfter (same as --consolidate-after)
  {karpenter.MODULE_ENV:<30} folder of Karpenter's Go module (default: <repo>/hack/karpenter)
  {ALLOCATION_ENV:<30} device-plugin|dra (same as --allocation)
  {binaries.ASSETS_ENV:<30} folder of prebuilt binaries to use instead of building them
  {cache.CACHE_ENV:<30} cache root; binaries go to <it>/neuron-groups/bin/<name>-<version>/
  {binaries.GO_ENV:<30} the go binary to build with (default: go on PATH)
  {binaries.MODULE_ENV:<30} folder of the Go module (default: <repo>/hack/cluster)
  {podnet.MODE_ENV:<30} auto|netns|loopback: how emulated pods get addresses
  {DEMO_TIMEOUT_ENV:<30} seconds `demo` waits for the workloads (same as --ready-timeout)
"""


def _autoscaler(text: str) -> str:
    try:
        return karpenter.parse_autoscaler(text)
    except karpenter.KarpenterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _allocation(text: str) -> str:
    value = text.strip().lower()
    if value not in ALLOCATIONS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an allocation path; use one of {', '.join(ALLOCATIONS)} "
            f"(flag --allocation or {ALLOCATION_ENV})"
        )
    return value


def _folder(text: str) -> Path:
    return Path(text).expanduser()


STATE_DIR_FLAG = Flag(
    "--state-dir",
    layout.STATE_ENV,
    "cluster state folder (kubeconfig, logs, pids)",
    parse=_folder,
    shown_default="<repo>/.cluster",
)
LOG_LEVEL_FLAG = log_level_flag(LOG_LEVEL_ENV)
AUTOSCALER_FLAG = Flag(
    "--autoscaler",
    AUTOSCALER_ENV,
    "node autoscaler: none, or karpenter (Karpenter's kwok provider, built from hack/karpenter)",
    "none",
    parse=_autoscaler,
)
CONSOLIDATE_AFTER_FLAG = Flag(
    "--consolidate-after",
    CONSOLIDATE_AFTER_ENV,
    "with --autoscaler karpenter: how long a node stays empty or under-used before Karpenter "
    "removes it",
    karpenter.Settings.consolidate_after,
)
ALLOCATION_FLAG = Flag(
    "--allocation",
    ALLOCATION_ENV,
    f"how nodes offer their NeuronCores: device-plugin ({CORE_RESOURCE}) or dra (the "
    "DRA driver's ResourceSlices only; see docs/dra.md)",
    DEVICE_PLUGIN,
    parse=_allocation,
)

READY_TIMEOUT_FLAG = Flag(
    "--ready-timeout",
    DEMO_TIMEOUT_ENV,
    "seconds demo waits for its NeuronWorkloads to be Ready",
    900.0,
    parse=number(float, 1),
    metavar="SECONDS",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-localcluster",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,"
            " kube-scheduler built from Go modules in hack/cluster), kwok-simulated Neuron nodes"
            " and emulated Neuron nodes running pods as local processes. Binaries are cached under "
            f"${cache.CACHE_ENV}/neuron-groups/bin; {binaries.ASSETS_ENV} is honoured."
        ),
    )
    add_flags(parser, [STATE_DIR_FLAG, LOG_LEVEL_FLAG])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build/reuse binaries and start the cluster")
    _node_flags(up)
    up.add_argument(
        "--recreate",
        action="store_true",
        help="start afresh even if a cluster is already running in the state folder",
    )
    sub.add_parser("down", help="stop every process of the cluster (no process left behind)")
    sub.add_parser("status", help="print the cluster's state as JSON; exit 1 if not running")
    build = sub.add_parser("build", help="only build (or find cached) control-plane binaries")
    add_flags(build, [AUTOSCALER_FLAG])
    demo = sub.add_parser("demo", help="cluster up, chart install, the seed's scenarios, results")
    _node_flags(demo, emulated_with_autoscaler=DEFAULT_EMULATED_NODES)
    add_flags(demo, [READY_TIMEOUT_FLAG])
    return parser


def _node_flags(cmd: argparse.ArgumentParser, *, emulated_with_autoscaler: str = "") -> None:
    with_autoscaler = emulated_with_autoscaler or "none"
    node_flags = [
        Flag(
            "--kwok-nodes",
            KWOK_NODES_ENV,
            "kwok-simulated nodes, e.g. '2xinf1.6xlarge,inf2.xlarge'; '' for none",
            shown_default=f"{DEFAULT_KWOK_NODES}, none with an autoscaler",
            keep_empty=True,
        ),
        Flag(
            "--emulated-nodes",
            EMULATED_NODES_ENV,
            "nodes whose pods really run as local processes, via the device plugin; '' for none",
            shown_default=f"{DEFAULT_EMULATED_NODES}, {with_autoscaler} with an autoscaler",
            keep_empty=True,
        ),
    ]
    add_flags(cmd, [*node_flags, AUTOSCALER_FLAG, CONSOLIDATE_AFTER_FLAG, ALLOCATION_FLAG])


def node_lists(
    kwok_nodes: str | None,
    emulated_nodes: str | None,
    autoscaler: str,
    *,
    emulated_with_autoscaler: str = "",
) -> tuple[str, str]:
    """The node lists to start: given ones as they are; defaults depend on the autoscaler.

    With an autoscaler the cluster starts with no Neuron node (Karpenter adds them); the demo
    keeps its one emulated node, where its inference really runs.
    """
    if autoscaler == "none":
        kwok_default, emulated_default = DEFAULT_KWOK_NODES, DEFAULT_EMULATED_NODES
    else:
        kwok_default, emulated_default = "", emulated_with_autoscaler
    return (
        kwok_default if kwok_nodes is None else kwok_nodes,
        emulated_default if emulated_nodes is None else emulated_nodes,
    )


def autoscaler_settings(autoscaler: str, consolidate_after: str) -> karpenter.Settings | None:
    if autoscaler == "none":
        return None
    return karpenter.Settings(consolidate_after=consolidate_after)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(log_format="text", level=args.log_level)
    state_dir = (args.state_dir or layout.default_state_dir()).resolve()
    try:
        return _run(args, state_dir)
    except (ClusterError, binaries.BinaryError, ValueError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1


def _run(args: argparse.Namespace, state_dir: Path) -> int:
    if args.command == "build":
        for name, path in binaries.ensure_binaries().as_dict().items():
            print(f"{name}: {path}")
        if args.autoscaler == "karpenter":
            assets = karpenter.ensure_karpenter()
            print(f"{karpenter.COMPONENT}: {assets.binary} ({assets.version})")
            print(f"karpenter CRDs: {assets.binary.parent / 'crds'}")
        return 0
    if args.command == "down":
        stopped = stop_cluster(state_dir)
        progress(f"stopped {', '.join(stopped) if stopped else 'nothing (no cluster running)'}")
        return 0
    if args.command == "status":
        try:
            cluster = LocalCluster.attach(state_dir)
        except ClusterError as exc:
            print(json.dumps({"running": False, "reason": str(exc)}, indent=2))
            return 1
        print(json.dumps({"running": cluster.running(), **cluster.status()}, indent=2))
        return 0 if cluster.running() else 1
    if args.command == "demo":
        kwok, emulated = node_lists(
            args.kwok_nodes,
            args.emulated_nodes,
            args.autoscaler,
            emulated_with_autoscaler=DEFAULT_EMULATED_NODES,
        )
        return demo.run(
            state_dir,
            kwok_nodes=kwok,
            emulated_nodes=emulated,
            autoscaler=autoscaler_settings(args.autoscaler, args.consolidate_after),
            allocation=args.allocation,
            ready_timeout_s=args.ready_timeout,
        )
    kwok, emulated = node_lists(args.kwok_nodes, args.emulated_nodes, args.autoscaler)
    cluster = ensure_up(
        state_dir,
        kwok,
        emulated,
        recreate=args.recreate,
        autoscaler=autoscaler_settings(args.autoscaler, args.consolidate_after),
        allocation=args.allocation,
    )
    for line in usage_lines(cluster):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
