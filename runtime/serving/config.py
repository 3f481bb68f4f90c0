"""Settings of ``neuron-runtime serve``: every flag, its environment variable, and their parsing.

Pods are configured through the environment (the operator writes ``NEURON_MODELS`` and
``NEURONCORE_GROUP_SIZES`` into the pod spec) while people at a terminal use flags, so each setting
has both; a flag wins over its variable.  Parsing is pure (it takes the environment as a mapping)
so the precedence rules and the error messages are tested without touching ``os.environ``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from neuron_cores.flags import Flag, FlagError, add_flags, log_format_flag, log_level_flag, resolve
from neuron_cores.models import MODELS_ENV, ModelEntry, ModelListError, decode_models
from neuron_cores.models import parse_model_pair as _parse_model_pair
from neuron_cores.numbers import quote, read_natural
from neuron_cores.ports import GRPC_PORT, HTTP_PORT

HTTP_PORT_ENV = "NEURON_HTTP_PORT"
GRPC_PORT_ENV = "NEURON_GRPC_PORT"
HOST_ENV = "NEURON_SERVE_HOST"
MAX_BODY_ENV = "NEURON_SERVE_MAX_BODY_BYTES"
LOG_FORMAT_ENV = "NEURON_LOG_FORMAT"
LOG_LEVEL_ENV = "NEURON_LOG_LEVEL"
GRACE_ENV = "NEURON_SERVE_SHUTDOWN_GRACE"
DRAIN_ENV = "NEURON_SERVE_DRAIN_DELAY"
THREADS_ENV = "NEURON_SERVE_THREADS_PER_GROUP"
READ_TIMEOUT_ENV = "NEURON_SERVE_READ_TIMEOUT"

DEFAULT_HTTP_PORT = HTTP_PORT
DEFAULT_GRPC_PORT = GRPC_PORT
DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 60.0
MAX_READ_TIMEOUT_S = 3600.0


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it, the accepted form and the fix."""


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelEntry, ...]
    host: str = "0.0.0.0"
    http_port: int = DEFAULT_HTTP_PORT
    # None: gRPC off.  0 (in create_server): any free port, as tests use.
    grpc_port: int | None = DEFAULT_GRPC_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY
    log_format: str = "text"
    log_level: str = "info"
    shutdown_grace_s: float = 30.0
    drain_delay_s: float = 0.0
    threads_per_group: int = 4
    # Headers must arrive within this of the connection opening (or of the previous answer on a
    # kept-alive connection), and a body within this of its headers; else the connection closes.
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S


def parse_model_entry(text: str, source: str) -> ModelEntry:
    try:
        return _parse_model_pair(text, source)
    except ModelListError as exc:
        raise ConfigError(str(exc)) from None


def parse_models_env(value: str) -> tuple[ModelEntry, ...]:
    """``NEURON_MODELS`` in load order (its encoding: ``neuron_cores.models``)."""
    try:
        return decode_models(value)
    except ModelListError as exc:
        raise ConfigError(str(exc)) from None


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        # ASCII digits only: int() would also read '٨٠٠٠' as 8000, and '+80' or '8_0'.
        number = read_natural(value.strip())
        if number is None or not low <= number <= high:
            raise ConfigError(
                f"{quote(value)} must be an integer from {low} to {high} (digits 0-9)"
            )
        return number

    return parse


def _seconds(value: str) -> float:
    """A number of seconds in ASCII (float() alone would also read '٣'); -1 when it is not."""
    try:
        return float(value) if value.isascii() else -1.0
    except ValueError:
        return -1.0


def _duration(value: str) -> float:
    number = _seconds(value)
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{value!r} must be a number of seconds, 0 or more")
    return number


def _timeout(value: str) -> float:
    number = _seconds(value)
    if not 0 < number <= MAX_READ_TIMEOUT_S:
        raise ConfigError(
            f"{quote(value)} must be a number of seconds above 0 and at most "
            f"{MAX_READ_TIMEOUT_S:.0f}, such as {DEFAULT_READ_TIMEOUT_S:.0f}"
        )
    return number


MODEL_FLAG = Flag(
    "--model",
    MODELS_ENV,
    "a model to load, in order; repeat the flag (or a NAME) for more models or copies; the "
    "variable holds comma-separated NAME=PATH pairs, or ';' first to separate them by ';' when "
    "a path holds ',' (used when no --model is given)",
    many=True,
    metavar="NAME=PATH",
    shown_default="none: give at least one",
)
SERVE_FLAGS = [
    Flag("--host", HOST_ENV, "address to listen on", "0.0.0.0"),
    Flag(
        "--http-port",
        HTTP_PORT_ENV,
        "REST port: Open Inference Protocol and /metrics",
        DEFAULT_HTTP_PORT,
        parse=_integer(1, 65535),
        metavar="PORT",
    ),
    Flag(
        "--grpc-port",
        GRPC_PORT_ENV,
        "gRPC port, inference.GRPCInferenceService; 0 turns gRPC off",
        DEFAULT_GRPC_PORT,
        parse=_integer(0, 65535),
        metavar="PORT",
    ),
    Flag(
        "--max-body-bytes",
        MAX_BODY_ENV,
        "largest request body (REST) or message (gRPC) accepted; larger ones get 413 / "
        "RESOURCE_EXHAUSTED",
        DEFAULT_MAX_BODY,
        parse=_integer(1024, 2**31 - 1),
        metavar="N",
    ),
    log_format_flag(LOG_FORMAT_ENV),
    log_level_flag(LOG_LEVEL_ENV),
    Flag(
        "--shutdown-grace",
        GRACE_ENV,
        "on SIGTERM, how long in-flight requests may take to finish",
        30.0,
        parse=_duration,
        metavar="SECONDS",
    ),
    Flag(
        "--drain-delay",
        DRAIN_ENV,
        "on SIGTERM, how long to keep serving with readiness false before closing the "
        "listeners, so load balancers notice",
        0.0,
        parse=_duration,
        metavar="SECONDS",
    ),
    Flag(
        "--read-timeout",
        READ_TIMEOUT_ENV,
        "REST: a request's headers must arrive within this (from the connection's start, or "
        "from the previous answer on a kept-alive connection, so it is also the idle keep-alive "
        "time), and its body within this of the headers; else the connection is closed (a late "
        "body gets 408 first)",
        DEFAULT_READ_TIMEOUT_S,
        parse=_timeout,
        metavar="SECONDS",
    ),
    Flag(
        "--threads-per-group",
        THREADS_ENV,
        "runs handed to each NeuronCore Group at once; more requests wait in the server and go "
        "in merged along the batch dimension",
        4,
        parse=_integer(1, 256),
        metavar="N",
    ),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``: each keeps its text, and config_from_args reads the environment."""
    add_flags(parser, [MODEL_FLAG, *SERVE_FLAGS], resolve_later=True)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Each setting from its flag, else its variable in ``env``, else its default."""
    if args.model:
        models = tuple(parse_model_entry(m, "--model") for m in args.model)
    else:
        models = parse_models_env(env.get(MODELS_ENV, ""))
    if not models:
        raise ConfigError(
            f"no models to serve: pass --model NAME=PATH (repeatable) or set {MODELS_ENV}="
            "name=path,name2=path2"
        )
    try:
        settings = {f.dest: resolve(f, getattr(args, f.dest), env) for f in SERVE_FLAGS}
    except FlagError as err:
        raise ConfigError(str(err)) from None
    settings["grpc_port"] = settings["grpc_port"] or None  # 0: off
    for seconds in ("shutdown_grace", "drain_delay", "read_timeout"):
        settings[f"{seconds}_s"] = settings.pop(seconds)
    # Each flag's parser returns its field's type; mypy cannot follow a dict of them.
    return ServeConfig(models=models, **settings)  # type: ignore[arg-type]
