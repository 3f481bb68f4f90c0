"""Reading the runtime's environment into one immutable ``RuntimeConfig`` (pure, no I/O).

Every knob is an environment variable, because that is how the Neuron runtime has always been
configured (and how the operator and device plugin hand settings to a pod).  Parsing of
``NEURONCORE_GROUP_SIZES`` and ``NEURON_RT_VISIBLE_CORES`` is the shared ``neuron_cores`` code,
so the runtime accepts exactly what the device plugin and the operator write.

Defaults, documented in docs/runtime.md:

* node size: ``NEURON_SIM_CORES`` (a count) or ``NEURON_SIM_INSTANCE_TYPE``; else 4 cores
  (inf1.xlarge, one Inferentia device);
* groups: without ``NEURONCORE_GROUP_SIZES``, one group of all ``NEURON_RT_VISIBLE_CORES`` when
  those are given, else one group filling one Neuron device (4 cores on Inferentia 1, as
  TensorFlow-Neuron did), capped at the node's size;
* state directory (the node-local arbiter's lock files): ``/tmp/neuron-sim-<uid>``;
* core memory: 8 MiB per core (the order of an Inferentia core's on-chip memory);
* scheduler: ``switch-aware`` with a streak bound of 32 requests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neuron_cores import (
    GROUP_SIZES_ENV,
    MAX_NODE_CORES,
    VISIBLE_CORES_ENV,
    CoreListError,
    UnknownInstanceTypeError,
    format_group_sizes,
    lookup_instance_type,
    parse_core_list,
    parse_group_sizes,
    read_natural,
)
from neuron_cores.logs import LOG_LEVELS
from neuron_cores.numbers import quote
from neuron_runtime.errors import RuntimeConfigError

SIM_CORES_ENV = "NEURON_SIM_CORES"
SIM_INSTANCE_TYPE_ENV = "NEURON_SIM_INSTANCE_TYPE"
STATE_DIR_ENV = "NEURON_SIM_STATE_DIR"
CORE_MEMORY_ENV = "NEURON_SIM_CORE_MEMORY_MB"
SCHEDULER_ENV = "NEURON_SIM_SCHEDULER"
MAX_STREAK_ENV = "NEURON_SIM_MAX_STREAK"
LOG_LEVEL_ENV = "NEURON_RT_LOG_LEVEL"

DEFAULT_NODE_CORES = 4
DEFAULT_CORES_PER_DEVICE = 4
DEFAULT_CORE_MEMORY_MB = 8.0
DEFAULT_MAX_STREAK = 32
MAX_STREAK_LIMIT = 1_000_000
SCHEDULERS = ("switch-aware", "fifo")

# Every variable the runtime reads, with a one-line meaning: the CLI's --help prints this table.
ENVIRONMENT_HELP: tuple[tuple[str, str], ...] = (
    (GROUP_SIZES_ENV, "group sizes, e.g. 2,4,6,4 or [1,2,1] or 16x1 (default: one device)"),
    (VISIBLE_CORES_ENV, "cores this process uses, e.g. 3, 4-7, 2,3,8 (default: ask the arbiter)"),
    (SIM_CORES_ENV, "simulated node size as a core count (default 4)"),
    (SIM_INSTANCE_TYPE_ENV, "simulated node size as an instance type, e.g. inf1.6xlarge"),
    (STATE_DIR_ENV, "node-local arbiter state (lock files) (default /tmp/neuron-sim-<uid>)"),
    (CORE_MEMORY_ENV, "per-core memory for resident model weights, MiB (default 8)"),
    (SCHEDULER_ENV, "switch-aware (default) or fifo (switch per request when interleaved)"),
    (MAX_STREAK_ENV, "switch-aware: most requests served in a row while others wait (32)"),
    (
        LOG_LEVEL_ENV,
        f"log level of the core workers (and of cores/compile): {'/'.join(LOG_LEVELS)}",
    ),
)


def default_state_dir() -> Path:
    return Path(f"/tmp/neuron-sim-{os.getuid()}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the runtime needs to know before it claims cores."""

    node_cores: int
    cores_per_device: int
    visible_cores: tuple[int, ...] | None
    group_sizes: tuple[int, ...]
    group_sizes_text: str
    state_dir: Path
    core_memory_bytes: int
    scheduler: str = "switch-aware"
    max_streak: int = DEFAULT_MAX_STREAK
    log_level: str = "warning"

    @property
    def cores_needed(self) -> int:
        return sum(self.group_sizes)


def _node_size(env: Mapping[str, str]) -> tuple[int, int]:
    """(node cores, cores per device) from NEURON_SIM_CORES / NEURON_SIM_INSTANCE_TYPE."""
    count_text = env.get(SIM_CORES_ENV, "").strip()
    type_text = env.get(SIM_INSTANCE_TYPE_ENV, "").strip()
    from_type: tuple[int, int] | None = None
    if type_text:
        try:
            itype = lookup_instance_type(type_text)
        except UnknownInstanceTypeError as exc:
            raise RuntimeConfigError(f"{SIM_INSTANCE_TYPE_ENV}: {exc}") from None
        from_type = (itype.cores, itype.cores_per_device)
    if count_text:
        count = read_natural(count_text) or 0
        if not 0 < count <= MAX_NODE_CORES:
            raise RuntimeConfigError(
                f"{SIM_CORES_ENV}={quote(count_text)} is not valid: expected a positive core "
                f"count of at most {MAX_NODE_CORES} in digits 0-9 such as '16', or unset it and "
                f"set {SIM_INSTANCE_TYPE_ENV} (e.g. inf1.6xlarge)."
            )
        if from_type is not None and from_type[0] != count:
            raise RuntimeConfigError(
                f"{SIM_CORES_ENV}={count_text!r} contradicts {SIM_INSTANCE_TYPE_ENV}="
                f"{type_text!r}, which has {from_type[0]} cores; set only one of them."
            )
        per_device = from_type[1] if from_type else min(DEFAULT_CORES_PER_DEVICE, count)
        return count, per_device
    if from_type is not None:
        return from_type
    return DEFAULT_NODE_CORES, DEFAULT_CORES_PER_DEVICE


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise RuntimeConfigError(
            f"{name}={text!r} is not valid: expected a non-negative number of MiB such as "
            f"'8' or '0.5' (0 keeps one model resident per group)."
        )
    return value


def _scheduler(env: Mapping[str, str]) -> tuple[str, int]:
    name = env.get(SCHEDULER_ENV, "").strip() or "switch-aware"
    if name not in SCHEDULERS:
        raise RuntimeConfigError(
            f"{SCHEDULER_ENV}={name!r} is not valid: accepted values are {', '.join(SCHEDULERS)}."
        )
    streak_text = env.get(MAX_STREAK_ENV, "").strip()
    if not streak_text:
        return name, DEFAULT_MAX_STREAK
    streak = read_natural(streak_text) or 0
    if not 0 < streak <= MAX_STREAK_LIMIT:
        raise RuntimeConfigError(
            f"{MAX_STREAK_ENV}={quote(streak_text)} is not valid: expected a positive count of "
            f"at most {MAX_STREAK_LIMIT} in digits 0-9 such as '{DEFAULT_MAX_STREAK}'."
        )
    return name, streak


def _log_level(env: Mapping[str, str]) -> str:
    """The core workers' level (they read the variable themselves), checked here, before any
    worker starts, so that a bad value is one clear error rather than a crash in each worker."""
    text = env.get(LOG_LEVEL_ENV, "").strip()
    if not text:
        return "warning"
    if text.lower() not in LOG_LEVELS:
        raise RuntimeConfigError(
            f"{LOG_LEVEL_ENV}={text!r} is not valid: accepted values are {', '.join(LOG_LEVELS)} "
            "(any case); fix or unset it."
        )
    return text.lower()


def config_from_env(env: Mapping[str, str]) -> RuntimeConfig:
    """Read and check every runtime variable; raises RuntimeConfigError quoting a bad value."""
    node_cores, per_device = _node_size(env)
    visible: tuple[int, ...] | None = None
    visible_text = env.get(VISIBLE_CORES_ENV)
    if visible_text is not None and visible_text.strip():
        try:
            # Checked against the node while it is read: '0-99999999' is never expanded.
            visible = parse_core_list(visible_text, node_cores=node_cores)
        except CoreListError as exc:
            where = f" The node's size comes from {SIM_CORES_ENV}/{SIM_INSTANCE_TYPE_ENV}."
            raise RuntimeConfigError(f"{exc}{where if exc.off_node else ''}") from None
    sizes_text = env.get(GROUP_SIZES_ENV)
    if sizes_text is not None and sizes_text.strip():
        try:
            sizes = parse_group_sizes(sizes_text)
        except ValueError as exc:
            raise RuntimeConfigError(str(exc)) from None
        shown = sizes_text.strip()
    else:
        sizes = (len(visible),) if visible else (min(per_device, node_cores),)
        shown = f"{format_group_sizes(sizes)} (default, variable unset)"
    state_text = env.get(STATE_DIR_ENV, "").strip()
    scheduler, streak = _scheduler(env)
    memory_mb = _positive_float(env, CORE_MEMORY_ENV, DEFAULT_CORE_MEMORY_MB)
    return RuntimeConfig(
        node_cores=node_cores,
        cores_per_device=per_device,
        visible_cores=visible,
        group_sizes=sizes,
        group_sizes_text=shown,
        state_dir=Path(state_text) if state_text else default_state_dir(),
        core_memory_bytes=int(memory_mb * 1024 * 1024),
        scheduler=scheduler,
        max_streak=streak,
        log_level=_log_level(env),
    )
