"""``neuron-dra-driver``: publish a node's NeuronCore blocks as ResourceSlices, keep them healthy.

One process per node.  It discovers the node through the device plugin's backends (``sysfs`` on a
real node, ``simulated`` for kwok and emulated nodes, which need not be the node it runs on),
publishes the pool, then polls health every ``--poll-seconds`` and republishes when the set of
unhealthy cores changes.  ``--once`` publishes and exits; ``--cleanup`` deletes the node's slices
and exits; ``--kubelet-plugin`` also serves the kubelet side
(:mod:`neuron_dra_driver.kubeletplugin`).  Every flag has an environment variable, shown in
``--help``; the flag wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from neuron_cores.flags import Flag, add_flags, log_format_flag, log_level_flag
from neuron_cores.logs import configure_logging
from neuron_device_plugin.cli import backend_flags
from neuron_device_plugin.cli import build_backend as device_plugin_backend
from neuron_device_plugin.topology import Backend, DiscoveryError, Topology
from neuron_dra_driver.kubeletplugin import (
    CHECKPOINT_FILE,
    DEFAULT_CDI_DIR,
    DEFAULT_PLUGIN_DIR,
    DEFAULT_REGISTRY_DIR,
    ClaimReader,
    DRAKubeletPlugin,
    KubeClaimReader,
    KubeletPluginServer,
)
from neuron_dra_driver.layout import DRIVER_NAME, LayoutError, shape_from_topology
from neuron_dra_driver.prepare import Checkpoint, CheckpointError
from neuron_dra_driver.publisher import (
    KubeSliceApi,
    Publisher,
    PublishError,
    SliceApi,
    delete_pool,
)

log = logging.getLogger("neuron_dra_driver")

PROG = "neuron-dra-driver"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
UNKNOWN_INSTANCE_TYPE = "unknown"
EXIT_USAGE = 2
EXIT_FAILED = 1


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number of seconds")
    return value


def _backend_flags() -> list[Flag]:
    """The device plugin's backend flags under NEURON_DRA_*; --instance-type says more here."""
    instance_type_help = (
        "the instanceType attribute; the simulated backend also takes the node's devices from "
        f"it. Unset: the node's {INSTANCE_TYPE_LABEL} label, else '{UNKNOWN_INSTANCE_TYPE}'"
    )
    return [
        replace(f, help=instance_type_help) if f.name == "--instance-type" else f
        for f in backend_flags("NEURON_DRA")
    ]


FLAGS = [
    Flag(
        "--node-name",
        "NEURON_DRA_NODE_NAME",
        "the Node whose pool to publish (in a DaemonSet: spec.nodeName from the downward API); "
        "with the simulated backend it may be any node, such as a kwok node",
        "",
        shown_default="required",
    ),
    *_backend_flags(),
    Flag(
        "--kubeconfig",
        "NEURON_DRA_KUBECONFIG",
        "kubeconfig file; empty: the in-cluster service account, else ~/.kube/config",
        "",
    ),
    Flag(
        "--poll-seconds",
        "NEURON_DRA_POLL_SECONDS",
        "how often health is read; slices are rewritten only when it changed",
        5.0,
        parse=positive_float,
    ),
    Flag(
        "--once", "NEURON_DRA_ONCE", "publish the node's slices once and exit", False, switch=True
    ),
    Flag(
        "--cleanup",
        "NEURON_DRA_CLEANUP",
        "delete every slice this driver published for the node and exit (uninstall)",
        False,
        switch=True,
    ),
    Flag(
        "--kubelet-plugin",
        "NEURON_DRA_KUBELET_PLUGIN",
        "also serve the kubelet side (DRA v1 NodePrepareResources/NodeUnprepareResources and "
        "plugin registration) on unix sockets; only for the node this process runs on",
        False,
        switch=True,
    ),
    Flag(
        "--plugin-dir",
        "NEURON_DRA_PLUGIN_DIR",
        "kubelet plugin: folder of the DRA socket (dra.sock) and the checkpoint",
        str(DEFAULT_PLUGIN_DIR),
    ),
    Flag(
        "--registry-dir",
        "NEURON_DRA_REGISTRY_DIR",
        "kubelet plugin: the kubelet's plugin registry folder, where the registration socket goes",
        str(DEFAULT_REGISTRY_DIR),
    ),
    Flag(
        "--cdi-dir",
        "NEURON_DRA_CDI_DIR",
        "kubelet plugin: where CDI specs of prepared claims are written (one file per claim)",
        str(DEFAULT_CDI_DIR),
    ),
    log_format_flag("NEURON_DRA_LOG_FORMAT"),
    log_level_flag("NEURON_DRA_LOG_LEVEL"),
]


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            f"DRA driver {DRIVER_NAME}: publishes every contiguous block of a node's NeuronCores "
            "as a device in ResourceSlices (resource.k8s.io/v1), with per-core counters so "
            "allocated blocks never overlap, and taints the blocks that cover an unhealthy core. "
            "Every flag can also be set by the environment variable shown; the flag wins."
        ),
    )
    add_flags(parser, FLAGS, environ)
    return parser


def build_backend(args: argparse.Namespace) -> Backend:
    """The device plugin's backend from the same flags: one source of truth for what a node has."""
    return device_plugin_backend(args)


def api_client(kubeconfig: str) -> Any:
    from kubernetes import client, config  # noqa: PLC0415 (a slow import)

    from_file: Any = config.new_client_from_config
    if kubeconfig:
        return from_file(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        in_cluster: Any = config.load_incluster_config
        in_cluster()
        return client.ApiClient()
    return from_file()


def read_node(api: Any, name: str) -> dict[str, Any]:
    """The Node's uid and labels; refuses a node the API server does not have."""
    from kubernetes import client  # noqa: PLC0415 (a slow import)

    try:
        response: Any = client.CoreV1Api(api).read_node(name, _preload_content=False)
    except client.ApiException as err:
        if err.status == 404:
            raise PublishError(
                f"node {name!r} does not exist; --node-name must name a Node of the cluster"
            ) from None
        raise PublishError(f"reading node {name}: the API server answered {err.reason}") from None
    metadata = json.loads(response.data)["metadata"]
    return {"uid": metadata["uid"], "labels": dict(metadata.get("labels") or {})}


class Driver:
    """One node: its backend, its discovered topology and the publisher of its pool."""

    def __init__(self, backend: Backend, topology: Topology, publisher: Publisher) -> None:
        self.backend = backend
        self.topology = topology
        self.publisher = publisher

    def step(self) -> bool:
        """Read health and publish if it changed; True when slices were written."""
        return self.publisher.publish(self.backend.unhealthy_cores(self.topology))

    def run(self, stop: threading.Event, poll_s: float) -> None:
        """Publish, then follow health until ``stop`` is set; API failures are retried."""
        while True:
            try:
                self.step()
            except PublishError as err:
                log.error("publishing failed, retrying in %.1fs: %s", poll_s, err)
            if stop.wait(poll_s):
                return


def make_driver(args: argparse.Namespace, api: SliceApi, node: dict[str, Any]) -> Driver:
    """The driver for ``args.node_name``; ``node`` is :func:`read_node`'s answer."""
    backend = build_backend(args)
    topology = backend.discover()
    instance_type = (
        args.instance_type or node["labels"].get(INSTANCE_TYPE_LABEL) or UNKNOWN_INSTANCE_TYPE
    )
    shape = shape_from_topology(topology, instance_type)
    owner = {"name": args.node_name, "uid": node["uid"]}
    return Driver(backend, topology, Publisher(api, args.node_name, shape, owner=owner))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(log_format=args.log_format, level=args.log_level)
    if not args.node_name:
        print(
            f"{PROG}: --node-name (env NEURON_DRA_NODE_NAME) is required: the Node whose "
            "NeuronCores to publish",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.once and args.cleanup:
        print(f"{PROG}: --once and --cleanup exclude each other; give one", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = api_client(args.kubeconfig)
        api = KubeSliceApi(client)
        if args.cleanup:
            deleted = delete_pool(api, args.node_name)
            print(f"deleted {deleted} ResourceSlices of node {args.node_name}")
            return 0
        driver = make_driver(args, api, read_node(client, args.node_name))
        if args.once:
            driver.step()
            return 0
    except (DiscoveryError, LayoutError, PublishError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_FAILED
    server = None
    if args.kubelet_plugin:
        try:
            server = make_kubelet_server(args, driver, KubeClaimReader(client))
            server.start()
        except (CheckpointError, OSError, RuntimeError) as err:
            print(f"{PROG}: cannot serve the kubelet plugin: {err}", file=sys.stderr)
            return EXIT_FAILED
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping; the slices stay published (--cleanup removes them)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        driver.run(stop, args.poll_seconds)
    finally:
        if server is not None:
            server.stop()
    return 0


def make_kubelet_server(
    args: argparse.Namespace, driver: Driver, reader: ClaimReader
) -> KubeletPluginServer:
    plugin_dir = Path(args.plugin_dir)
    plugin = DRAKubeletPlugin(
        node=args.node_name,
        shape=driver.publisher.shape,
        topology=driver.topology,
        reader=reader,
        cdi_dir=Path(args.cdi_dir),
        checkpoint=Checkpoint(plugin_dir / CHECKPOINT_FILE),
    )
    return KubeletPluginServer(plugin, plugin_dir, Path(args.registry_dir))


if __name__ == "__main__":
    sys.exit(main())
