"""``neuron-device-plugin``: the command the DaemonSet runs.

Every flag has an environment variable (``NEURON_DP_*``), so the Helm chart can set either; a
flag given on the command line wins over its variable.  ``main`` only parses, wires and waits: the
work is in :class:`~neuron_device_plugin.plugin.PluginManager`, which tests run in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from neuron_cores.logs import LOG_FORMATS, configure_logging
from neuron_device_plugin.ids import CORE_RESOURCE, DEFAULT_PLUGIN_DIR, DEVICE_RESOURCE
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


class _Flags:
    """argparse with an environment variable behind every flag, shown in ``--help``."""

    def __init__(self, parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
        self.parser = parser
        self.environ = environ

    def add(
        self,
        flag: str,
        var: str,
        help_text: str,
        default: object,
        *,
        kind: Callable[[str], object] = str,
        choices: Sequence[str] | None = None,
    ) -> None:
        raw = self.environ.get(var, "")
        value = default
        if raw:
            try:
                value = kind(raw)
            except ValueError:
                raise SystemExit(
                    f"neuron-device-plugin: {var}={raw!r} is not valid for {flag} "
                    f"(expected {getattr(kind, '__name__', 'a value')}); fix or unset it"
                ) from None
            if choices is not None and value not in choices:
                raise SystemExit(
                    f"neuron-device-plugin: {var}={raw!r} is not valid for {flag}; "
                    f"choose one of: {', '.join(choices)}"
                )
        self.parser.add_argument(
            flag, default=value, type=kind, choices=choices, help=f"{help_text} [env {var}]"
        )


def boolean(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), any case."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def port(text: str) -> int:
    """A TCP port number, 0 to 65535 (0 turns the server off)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is outside 0-65535")
    return value


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="neuron-device-plugin",
        description=(
            "Kubelet device plugin (API v1beta1) for AWS Neuron: advertises one ID per NeuronCore "
            f"({CORE_RESOURCE}) and one per Neuron device ({DEVICE_RESOURCE}), kept exclusive "
            "in use, prefers contiguous cores, and reports health. Every flag can also be set by "
            "the environment variable shown; the flag wins."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = _Flags(parser, env).add
    add("--backend", "NEURON_DP_BACKEND", "where devices come from", "sysfs", choices=BACKENDS)
    add(
        "--device-plugin-dir",
        "NEURON_DP_DEVICE_PLUGIN_DIR",
        "the kubelet's device-plugin directory (holds kubelet.sock and our sockets)",
        DEFAULT_PLUGIN_DIR,
    )
    add(
        "--core-resource-name",
        "NEURON_DP_CORE_RESOURCE",
        "extended resource advertising one ID per NeuronCore",
        CORE_RESOURCE,
    )
    add(
        "--device-resource-name",
        "NEURON_DP_DEVICE_RESOURCE",
        "extended resource advertising one ID per Neuron device",
        DEVICE_RESOURCE,
    )
    add(
        "--resources",
        "NEURON_DP_RESOURCES",
        "which resources the node offers: both (the two, kept exclusive: silicon one has handed "
        "out is Unhealthy on the other), neuroncore (cores only) or neuron (devices only)",
        ResourcesMode.BOTH.value,
        choices=[m.value for m in ResourcesMode],
    )
    add(
        "--pod-resources-socket",
        "NEURON_DP_POD_RESOURCES_SOCKET",
        "with --resources both: the kubelet's PodResources socket, listed on every health poll "
        "to learn which held devices came back (and, after a restart, which are still held); "
        "'none' turns it off, and then holds last until the plugin restarts",
        DEFAULT_POD_RESOURCES_SOCKET,
    )
    add(
        "--publish-allocations",
        "NEURON_DP_PUBLISH_ALLOCATIONS",
        "publish which pod holds which NeuronCore (from the PodResources listing) as the "
        "neurongroups.dev/core-allocations annotation of this plugin's Node (--node-name), "
        "for kubectl neuron and the operator's status; true or false",
        False,
        kind=boolean,
    )
    add(
        "--node-name",
        "NEURON_DP_NODE_NAME",
        "with --publish-allocations: the Node this plugin runs on",
        "",
    )
    add(
        "--kubeconfig",
        "NEURON_DP_KUBECONFIG",
        "with --publish-allocations: kubeconfig file; empty: the in-cluster service account",
        "",
    )
    add(
        "--allocation-policy",
        "NEURON_DP_ALLOCATION_POLICY",
        "how GetPreferredAllocation picks indexes",
        DEFAULT_POLICY,
        choices=sorted(POLICIES),
    )
    add(
        "--sysfs-root",
        "NEURON_DP_SYSFS_ROOT",
        "sysfs backend: the driver's neuron_device class directory",
        DEFAULT_SYSFS_ROOT,
    )
    add(
        "--dev-root",
        "NEURON_DP_DEV_ROOT",
        "sysfs backend: where the neuronN device nodes are, as this process sees them",
        DEFAULT_DEV_ROOT,
    )
    add(
        "--host-dev-root",
        "NEURON_DP_HOST_DEV_ROOT",
        "sysfs backend: where the kubelet (the host) finds the same device nodes; the DeviceSpecs "
        "handed to containers use it. Defaults to --dev-root; set /dev when the host's /dev is "
        "mounted elsewhere in the plugin's container",
        None,
    )
    add(
        "--error-counters",
        "NEURON_DP_ERROR_COUNTERS",
        "sysfs backend: comma list of per-core status counters whose rise marks a core unhealthy",
        ",".join(DEFAULT_ERROR_COUNTERS),
    )
    add(
        "--recovery-seconds",
        "NEURON_DP_RECOVERY_SECONDS",
        "sysfs backend: quiet time after the last error-counter rise before a core is healthy "
        "again",
        DEFAULT_RECOVERY_S,
        kind=float,
    )
    add(
        "--instance-type",
        "NEURON_DP_INSTANCE_TYPE",
        "simulated backend: an instance type such as inf1.6xlarge",
        None,
    )
    add(
        "--devices",
        "NEURON_DP_DEVICES",
        "simulated backend: number of Neuron devices",
        None,
        kind=int,
    )
    add(
        "--cores-per-device",
        "NEURON_DP_CORES_PER_DEVICE",
        "simulated backend: NeuronCores on each device",
        None,
        kind=int,
    )
    add(
        "--health-file",
        "NEURON_DP_HEALTH_FILE",
        "simulated backend: file listing unhealthy cores ('3', '4-7', '0,5'); empty or missing "
        "means all healthy",
        None,
    )
    add(
        "--health-interval",
        "NEURON_DP_HEALTH_INTERVAL",
        "seconds between health polls",
        2.0,
        kind=float,
    )
    add(
        "--metrics-port",
        "NEURON_DP_METRICS_PORT",
        "Prometheus metrics port (0-65535); 0 disables",
        9465,
        kind=port,
    )
    add(
        "--metrics-address",
        "NEURON_DP_METRICS_ADDRESS",
        "address the metrics server binds",
        "0.0.0.0",
    )
    add(
        "--log-level",
        "NEURON_DP_LOG_LEVEL",
        "log level",
        "info",
        kind=str.lower,
        choices=("debug", "info", "warning", "error"),
    )
    add(
        "--log-format",
        "NEURON_DP_LOG_FORMAT",
        "log format",
        "text",
        kind=str.lower,
        choices=LOG_FORMATS,
    )
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
