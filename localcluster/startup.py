"""Bring up a local cluster, or reuse the one running: what ``up`` and ``make demo`` share.

Why a module of its own: the CLI (:mod:`neuron_localcluster.cli`) runs the demo
(:mod:`neuron_localcluster.demo`), and the demo starts its cluster the way ``up`` does; with
this here both import it and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from neuron_localcluster import karpenter
from neuron_localcluster.cluster import ClusterError, LocalCluster
from neuron_localcluster.layout import DEVICE_PLUGIN


def progress(message: str) -> None:
    print(f"==> {message}", flush=True)


def usage_lines(cluster: LocalCluster) -> list[str]:
    return [
        f"kubeconfig: {cluster.kubeconfig}",
        f"use it:     export KUBECONFIG={cluster.kubeconfig}; kubectl get nodes",
        "            (kubectl: python -m neuron_localcluster.clitools kubectl prints its path)",
        "stop it:    make cluster-down   (or: neuron-localcluster down)",
    ]


def ensure_up(
    state_dir: Path,
    kwok_nodes: str,
    emulated_nodes: str,
    *,
    recreate: bool = False,
    autoscaler: karpenter.Settings | None = None,
    allocation: str = DEVICE_PLUGIN,
) -> LocalCluster:
    """The running cluster in ``state_dir`` if its autoscaler matches and it runs with
    ``allocation``; else a fresh one."""
    if not recreate:
        try:
            current = LocalCluster.attach(state_dir)
        except ClusterError:
            current = None
        if current is not None and current.running():
            wanted = "none" if autoscaler is None else "karpenter"
            if current.autoscaler != wanted:
                raise ClusterError(
                    f"the cluster running in {state_dir} has autoscaler {current.autoscaler!r}, "
                    f"not {wanted!r}; stop it (`make cluster-down`) or pass --recreate"
                )
        if current is not None and current.running() and current.allocation != allocation:
            progress(
                f"the cluster in {state_dir} runs with --allocation {current.allocation}; "
                f"starting afresh with {allocation}"
            )
        elif current is not None and current.running():
            progress(
                f"a cluster is already running in {state_dir}; reusing it (--recreate: afresh)"
            )
            return current
    return LocalCluster.up(
        state_dir,
        kwok_nodes=kwok_nodes,
        emulated_nodes=emulated_nodes,
        progress=progress,
        autoscaler=autoscaler,
        allocation=allocation,
    )
