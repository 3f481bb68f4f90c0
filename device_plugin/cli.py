"""``neuron-device-plugin``: the command the DaemonSet runs.

Every flag has an environment variable (``NEURON_DP_*``), so the Helm chart can set either; a
flag given on the command line wins over its variable.  ``main`` only parses, wires and waits: the
work is in :class:`~neuron_device_plugin.plugin.PluginManager`, which tests run in-process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from neuron_cores import ALLOCATIONS_ANNOTATION, CORE_RESOURCE, DEVICE_RESOURCE
from neuron_cores.flags import Flag, add_flags, boolean, log_format_flag, log_level_flag
from neuron_cores.logs import configure_logging
from neuron_device_plugin.ids import DEFAULT_PLUGIN_DIR
from neuron_device_plugin.metrics import PluginMetrics, serve_metrics
from neuron_device_plugin.plugin import PluginConfig, PluginManager
from neuron_device_plugin.podresources import DEFAULT_POD_RESOURCES_SOCKET
from neuron_device_plugin.policy import DEFAULT_POLICY, POLICIES
from neuron_device_plugin.resources import ResourcesMode
from neuron_device_plugin.simulated_backend import SimulatedBackend
from neuron_device_plugin.sysfs_backend import (
    DEFAULT_DEV_ROOT,
    DEFAULT_ERROR_COUNTERS,
    DEFAULT_RECOVERY_S,
    DEFAULT_SYSFS_ROOT,
    SysfsBackend,
)
from neuron_device_plugin.topology import Backend, DiscoveryError

log = logging.getLogger("neuron_device_plugin")

BACKENDS = ("sysfs", "simulated")
EXIT_USAGE = 2
EXIT_FAILED = 1


def port(text: str) -> int:
    """A TCP port number, 0 to 65535 (0 turns the server off)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number; give 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is outside 0-65535")
    return value


def backend_flags(prefix: str) -> list[Flag]:
    """The flags that choose and configure a backend, with variables named ``<prefix>_*``.

    The DRA driver discovers nodes through the same backends, so it takes these same flags
    under its own prefix (``NEURON_DRA``); :func:`build_backend` reads them for both.
    """
    return [
        Flag(
            "--backend", f"{prefix}_BACKEND", "where devices come from", "sysfs", choices=BACKENDS
        ),
        Flag(
            "--sysfs-root",
            f"{prefix}_SYSFS_ROOT",
            "sysfs backend: the driver's neuron_device class directory",
            DEFAULT_SYSFS_ROOT,
        ),
        Flag(
            "--dev-root",
            f"{prefix}_DEV_ROOT",
            "sysfs backend: where the neuronN device nodes are, as this process sees them",
            DEFAULT_DEV_ROOT,
        ),
        Flag(
            "--host-dev-root",
            f"{prefix}_HOST_DEV_ROOT",
            "sysfs backend: where the host finds the same device nodes, written into what "
            "containers get (DeviceSpecs, CDI specs); set /dev when the host's /dev is mounted "
            "elsewhere in this container (the chart mounts it at /host/dev)",
            shown_default="--dev-root",
        ),
        Flag(
            "--error-counters",
            f"{prefix}_ERROR_COUNTERS",
            "sysfs backend: comma list of per-core status counters whose rise marks a core "
            "unhealthy",
            ",".join(DEFAULT_ERROR_COUNTERS),
        ),
        Flag(
            "--recovery-seconds",
            f"{prefix}_RECOVERY_SECONDS",
            "sysfs backend: quiet time after the last error-counter rise before a core is "
            "healthy again",
            DEFAULT_RECOVERY_S,
            parse=float,
        ),
        Flag(
            "--instance-type",
            f"{prefix}_INSTANCE_TYPE",
            "simulated backend: an instance type such as inf1.6xlarge",
        ),
        Flag(
            "--devices",
            f"{prefix}_DEVICES",
            "simulated backend: number of Neuron devices (with --cores-per-device, instead of "
            "--instance-type)",
            parse=int,
        ),
        Flag(
            "--cores-per-device",
            f"{prefix}_CORES_PER_DEVICE",
            "simulated backend: NeuronCores on each device",
            parse=int,
        ),
        Flag(
            "--health-file",
            f"{prefix}_HEALTH_FILE",
            "simulated backend: file listing unhealthy cores ('3', '4-7', '0,5'); empty or "
            "missing means all healthy",
        ),
    ]


FLAGS = [
    Flag(
        "--device-plugin-dir",
        "NEURON_DP_DEVICE_PLUGIN_DIR",
        "the kubelet's device-plugin directory (holds kubelet.sock and our sockets)",
        DEFAULT_PLUGIN_DIR,
    ),
    Flag(
        "--core-resource-name",
        "NEURON_DP_CORE_RESOURCE",
        "extended resource advertising one ID per NeuronCore",
        CORE_RESOURCE,
    ),
    Flag(
        "--device-resource-name",
        "NEURON_DP_DEVICE_RESOURCE",
        "extended resource advertising one ID per Neuron device",
        DEVICE_RESOURCE,
    ),
    Flag(
        "--resources",
        "NEURON_DP_RESOURCES",
        "which resources the node offers: both (the two, kept exclusive: silicon one has handed "
        "out is Unhealthy on the other), neuroncore (cores only) or neuron (devices only)",
        ResourcesMode.BOTH.value,
        choices=[m.value for m in ResourcesMode],
    ),
    Flag(
        "--pod-resources-socket",
        "NEURON_DP_POD_RESOURCES_SOCKET",
        "with --resources both: the kubelet's PodResources socket, listed on every health poll "
        "to learn which held devices came back (and, after a restart, which are still held); "
        "'none' turns it off, and then holds last until the plugin restarts",
        DEFAULT_POD_RESOURCES_SOCKET,
    ),
    Flag(
        "--publish-allocations",
        "NEURON_DP_PUBLISH_ALLOCATIONS",
        "publish which pod holds which NeuronCore (from the PodResources listing) as the "
        f"{ALLOCATIONS_ANNOTATION} annotation of this plugin's Node (--node-name), for kubectl "
        "neuron and the operator's status; true or false",
        False,
        parse=boolean,
    ),
    Flag(
        "--node-name",
        "NEURON_DP_NODE_NAME",
        "with --publish-allocations: the Node this plugin runs on",
        "",
    ),
    Flag(
        "--kubeconfig",
        "NEURON_DP_KUBECONFIG",
        "with --publish-allocations: kubeconfig file; empty: the in-cluster service account",
        "",
    ),
    Flag(
        "--allocation-policy",
        "NEURON_DP_ALLOCATION_POLICY",
        "how GetPreferredAllocation picks indexes",
        DEFAULT_POLICY,
        choices=sorted(POLICIES),
    ),
    *backend_flags("NEURON_DP"),
    Flag(
        "--health-interval",
        "NEURON_DP_HEALTH_INTERVAL",
        "seconds between health polls",
        2.0,
        parse=float,
    ),
    Flag(
        "--metrics-port",
        "NEURON_DP_METRICS_PORT",
        "Prometheus metrics port (0-65535); 0 disables",
        9465,
        parse=port,
    ),
    Flag(
        "--metrics-address",
        "NEURON_DP_METRICS_ADDRESS",
        "address the metrics server binds",
        "0.0.0.0",
    ),
    log_level_flag("NEURON_DP_LOG_LEVEL"),
    log_format_flag("NEURON_DP_LOG_FORMAT"),
]


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-device-plugin",
        description=(
            "Kubelet device plugin (API v1beta1) for AWS Neuron: advertises one ID per NeuronCore "
            f"({CORE_RESOURCE}) and one per Neuron device ({DEVICE_RESOURCE}), kept exclusive "
            "in use, prefers contiguous cores, and reports health. Every flag can also be set by "
            "the environment variable shown; the flag wins."
        ),
    )
    add_flags(parser, FLAGS, environ)
    return parser


def pod_resources_socket(value: str) -> Path | None:
    """The ``--pod-resources-socket`` value as a path; None for ``none`` or empty (off)."""
    return None if value.strip().lower() in ("", "none") else Path(value)


def build_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "simulated":
        return SimulatedBackend.from_flags(
            instance_type=args.instance_type,
            devices=args.devices,
            cores_per_device=args.cores_per_device,
            health_file=Path(args.health_file) if args.health_file else None,
        )
    counters = [c.strip() for c in args.error_counters.split(",") if c.strip()]
    return SysfsBackend(
        sysfs_root=Path(args.sysfs_root),
        dev_root=Path(args.dev_root),
        host_dev_root=Path(args.host_dev_root) if args.host_dev_root else None,
        error_counters=counters,
        recovery_s=args.recovery_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(log_format=args.log_format, level=args.log_level)
    try:
        config = PluginConfig(
            plugin_dir=Path(args.device_plugin_dir),
            core_resource=args.core_resource_name,
            device_resource=args.device_resource_name,
            policy=args.allocation_policy,
            health_interval_s=args.health_interval,
            resources=args.resources,
            pod_resources_socket=pod_resources_socket(args.pod_resources_socket),
            publish_node=args.node_name if args.publish_allocations else None,
            kubeconfig=args.kubeconfig or None,
        )
        backend = build_backend(args)
    except (ValueError, DiscoveryError) as err:
        print(f"neuron-device-plugin: {err}", file=sys.stderr)
        return EXIT_USAGE
    metrics = PluginMetrics()
    manager = PluginManager(backend, config, metrics)
    try:
        manager.start()
    except (DiscoveryError, OSError, ValueError) as err:
        print(f"neuron-device-plugin: {err}", file=sys.stderr)
        manager.stop()
        return EXIT_FAILED
    http = None
    if args.metrics_port:
        try:
            http = serve_metrics(
                metrics.registry,
                args.metrics_address,
                args.metrics_port,
                live=manager.liveness,
                ready=manager.readiness,
            )
        except OSError as err:
            manager.stop()
            print(
                f"neuron-device-plugin: cannot serve metrics on {args.metrics_address}:"
                f"{args.metrics_port}: {err}; choose a free --metrics-port (0 disables it)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        log.info("metrics and probes on %s:%d", args.metrics_address, args.metrics_port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        manager.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    manager.wait()
    if http is not None:
        http.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
