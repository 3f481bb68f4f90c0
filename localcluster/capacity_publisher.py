"""The device plugin's stand-in on the nodes Karpenter makes: their full NeuronCore capacity.

Why a process of its own: on a real Neuron node the kubelet and the device plugin report the
node's NeuronCores; on a static kwok node the Node object is written with them
(:mod:`neuron_localcluster.nodes`).  The nodes Karpenter's kwok provider makes get allocatable
NeuronCores from the instance-types file but a capacity of only what their first pods asked
for; this loop patches each to the instance type's full counts
(:func:`neuron_localcluster.karpenter.capacity_patch`).  It is not imported by the package, so
``python -m`` runs it without importing it twice.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from kubernetes import client as k8s

from neuron_cores.logs import configure_logging
from neuron_localcluster.karpenter import NODEPOOL_LABEL, capacity_patch
from neuron_localcluster.kube import ApiException, api_client_for, body, raw_json

log = logging.getLogger(__name__)


def publish(kubeconfig: Path, interval: float, stop: threading.Event) -> None:
    """Patch every node :func:`capacity_patch` names, every ``interval`` s, until ``stop``."""
    core = k8s.CoreV1Api(api_client_for(kubeconfig))
    while not stop.is_set():
        try:
            answer = core.list_node(label_selector=NODEPOOL_LABEL, _preload_content=False)
            for node in raw_json(answer)["items"]:
                patch = capacity_patch(node)
                if patch is not None:
                    core.patch_node_status(node["metadata"]["name"], body(patch))
                    log.info("published Neuron capacity of node %s", node["metadata"]["name"])
        except (ApiException, OSError, ValueError) as exc:
            log.warning("publishing node capacity: %s", exc)
        stop.wait(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuron_localcluster.capacity_publisher")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval {args.interval} must be a positive number of seconds")
    configure_logging(log_format="text", level="INFO")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    publish(args.kubeconfig, args.interval, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
