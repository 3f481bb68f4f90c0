"""Settings of ``neuron-runtime serve``: every flag, its environment variable, and their parsing.

Pods are configured through the environment (the operator writes ``NEURON_MODELS`` and
``NEURONCORE_GROUP_SIZES`` into the pod spec) while people at a terminal use flags, so each setting
has both; a flag wins over its variable.  Parsing is pure (it takes the environment as a mapping)
so the precedence rules and the error messages are tested without touching ``os.environ``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from neuron_cores.logs import LOG_FORMATS
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
LOG_LEVELS = ("debug", "info", "warning", "error")
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


def _int_setting(value: str, what: str, low: int, high: int) -> int:
    # ASCII digits only: int() would also read '٨٠٠٠' as 8000, and '+80' or '8_0'.
    number = read_natural(value.strip())
    if number is None or not low <= number <= high:
        raise ConfigError(
            f"{what}: {quote(value)} must be an integer from {low} to {high} (digits 0-9)"
        )
    return number


def _seconds(value: str) -> float:
    """A number of seconds in ASCII (float() alone would also read '٣'); -1 when it is not."""
    try:
        return float(value) if value.isascii() else -1.0
    except ValueError:
        return -1.0


def _float_setting(value: str, what: str) -> float:
    number = _seconds(value)
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{what}: {value!r} must be a number of seconds, 0 or more")
    return number


def _timeout_setting(value: str, what: str) -> float:
    number = _seconds(value)
    if not 0 < number <= MAX_READ_TIMEOUT_S:
        raise ConfigError(
            f"{what}: {quote(value)} must be a number of seconds above 0 and at most "
            f"{MAX_READ_TIMEOUT_S:.0f}, such as {DEFAULT_READ_TIMEOUT_S:.0f}"
        )
    return number


def _choice(value: str, what: str, choices: Sequence[str]) -> str:
    if value.lower() not in choices:
        raise ConfigError(f"{what}: {value!r} must be one of {', '.join(choices)}")
    return value.lower()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``.  Defaults are None so that the environment can fill them in."""
    add = parser.add_argument
    add(
        "--model",
        action="append",
        metavar="NAME=PATH",
        help=f"a model to load, in order; repeat the flag (or a NAME) for more models or copies. "
        f"Env {MODELS_ENV}: comma-separated NAME=PATH pairs, or ';' first to separate them "
        "by ';' when a path holds ',' (used when no --model is given)",
    )
    add(
        "--host",
        help=f"address to listen on (env {HOST_ENV}; default 0.0.0.0)",
    )
    add(
        "--http-port",
        metavar="PORT",
        help=f"REST port: Open Inference Protocol and /metrics (env {HTTP_PORT_ENV}; "
        f"default {DEFAULT_HTTP_PORT})",
    )
    add(
        "--grpc-port",
        metavar="PORT",
        help=f"gRPC port, inference.GRPCInferenceService; 0 turns gRPC off (env {GRPC_PORT_ENV}; "
        f"default {DEFAULT_GRPC_PORT})",
    )
    add(
        "--max-body-bytes",
        metavar="N",
        help=f"largest request body (REST) or message (gRPC) accepted; larger ones get 413 / "
        f"RESOURCE_EXHAUSTED (env {MAX_BODY_ENV}; default {DEFAULT_MAX_BODY})",
    )
    add(
        "--log-format",
        help=f"log lines as 'text' or one JSON object per line 'json' (env {LOG_FORMAT_ENV}; "
        "default text)",
    )
    add("--log-level", help=f"{', '.join(LOG_LEVELS)} (env {LOG_LEVEL_ENV}; default info)")
    add(
        "--shutdown-grace",
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight requests may take to finish (env {GRACE_ENV}; "
        "default 30)",
    )
    add(
        "--drain-delay",
        metavar="SECONDS",
        help=f"on SIGTERM, how long to keep serving with readiness false before closing the "
        f"listeners, so load balancers notice (env {DRAIN_ENV}; default 0)",
    )
    add(
        "--read-timeout",
        metavar="SECONDS",
        help=f"REST: a request's headers must arrive within this (from the connection's start, "
        f"or from the previous answer on a kept-alive connection, so it is also the idle "
        f"keep-alive time), and its body within this of the headers; else the connection is "
        f"closed (a late body gets 408 first) (env {READ_TIMEOUT_ENV}; "
        f"default {DEFAULT_READ_TIMEOUT_S:.0f})",
    )
    add(
        "--threads-per-group",
        metavar="N",
        help=f"runs handed to each NeuronCore Group at once; more requests wait in the server "
        f"and go in merged along the batch dimension (env {THREADS_ENV}; default 4)",
    )


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    def pick(flag: object, key: str) -> str | None:
        if flag is not None:
            return str(flag)
        return env.get(key) or None

    if args.model:
        models = tuple(parse_model_entry(m, "--model") for m in args.model)
    else:
        models = parse_models_env(env.get(MODELS_ENV, ""))
    if not models:
        raise ConfigError(
            f"no models to serve: pass --model NAME=PATH (repeatable) or set {MODELS_ENV}="
            "name=path,name2=path2"
        )
    config = ServeConfig(models=models)
    host = pick(args.host, HOST_ENV)
    http = pick(args.http_port, HTTP_PORT_ENV)
    grpc = pick(args.grpc_port, GRPC_PORT_ENV)
    body = pick(args.max_body_bytes, MAX_BODY_ENV)
    log_format = pick(args.log_format, LOG_FORMAT_ENV)
    log_level = pick(args.log_level, LOG_LEVEL_ENV)
    grace = pick(args.shutdown_grace, GRACE_ENV)
    drain = pick(args.drain_delay, DRAIN_ENV)
    threads = pick(args.threads_per_group, THREADS_ENV)
    read_timeout = pick(args.read_timeout, READ_TIMEOUT_ENV)
    grpc_port = config.grpc_port
    if grpc is not None:
        grpc_port = _int_setting(grpc, f"--grpc-port/{GRPC_PORT_ENV}", 0, 65535) or None
    return ServeConfig(
        models=models,
        host=host or config.host,
        http_port=config.http_port
        if http is None
        else _int_setting(http, f"--http-port/{HTTP_PORT_ENV}", 1, 65535),
        grpc_port=grpc_port,
        max_body_bytes=config.max_body_bytes
        if body is None
        else _int_setting(body, f"--max-body-bytes/{MAX_BODY_ENV}", 1024, 2**31 - 1),
        log_format=config.log_format
        if log_format is None
        else _choice(log_format, f"--log-format/{LOG_FORMAT_ENV}", LOG_FORMATS),
        log_level=config.log_level
        if log_level is None
        else _choice(log_level, f"--log-level/{LOG_LEVEL_ENV}", LOG_LEVELS),
        shutdown_grace_s=config.shutdown_grace_s
        if grace is None
        else _float_setting(grace, f"--shutdown-grace/{GRACE_ENV}"),
        drain_delay_s=config.drain_delay_s
        if drain is None
        else _float_setting(drain, f"--drain-delay/{DRAIN_ENV}"),
        threads_per_group=config.threads_per_group
        if threads is None
        else _int_setting(threads, f"--threads-per-group/{THREADS_ENV}", 1, 256),
        read_timeout_s=config.read_timeout_s
        if read_timeout is None
        else _timeout_setting(read_timeout, f"--read-timeout/{READ_TIMEOUT_ENV}"),
    )
