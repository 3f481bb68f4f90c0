"""``neuron-runtime serve``: flags and environment in, a running server out.

``add_serve_arguments`` and ``run_serve`` are what the ``neuron-runtime`` command's ``serve``
subcommand calls; ``main`` lets ``python -m neuron_runtime.serving`` run the same thing alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import uvloop

from neuron_cores import GROUP_SIZES_ENV
from neuron_cores.logs import configure_logging
from neuron_runtime.config import ENVIRONMENT_HELP
from neuron_runtime.serving.config import ConfigError, add_serve_arguments, config_from_args
from neuron_runtime.serving.runtime_binding import server_for_runtime
from neuron_runtime.serving.server import ListenError, run_until_signalled

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Serve models over the Open Inference Protocol (KServe v2): REST with JSON and binary tensors "
    "on --http-port (plus /metrics), gRPC inference.GRPCInferenceService on --grpc-port. Models "
    f"load in the order given into the groups of {GROUP_SIZES_ENV}; a name given again is "
    "another copy, in its own group. SIGTERM drains and exits 0."
)


def _runtime_env_epilog() -> str:
    """The runtime's own variables: ``serve`` builds its NeuronRuntime from them."""
    lines = ["environment variables read by the runtime the models load into:"]
    lines += [f"  {name:<27} {meaning}" for name, meaning in ENVIRONMENT_HELP]
    return "\n".join(lines)


def build_parser(prog: str = "neuron-runtime serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(DESCRIPTION, 79),
        epilog=_runtime_env_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    return parser


def run_serve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    try:
        config = config_from_args(args, environ)
    except ConfigError as exc:
        print(f"neuron-runtime serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(log_format=config.log_format, level=config.log_level)
    server = server_for_runtime(config, environ)
    try:
        return run_event_loop(run_until_signalled(server))
    except ListenError as exc:
        print(f"neuron-runtime serve: {exc}", file=sys.stderr)
        return 2


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop (a dependency of the package): less CPU per request than asyncio's loop."""
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    return run_serve(build_parser().parse_args(argv))


def add_serve_command(subparsers: Any) -> None:
    """Register ``serve`` on the ``neuron-runtime`` command's subparsers."""
    parser = subparsers.add_parser(
        "serve",
        help="serve models over the Open Inference Protocol (REST and gRPC)",
        description=textwrap.fill(DESCRIPTION, 79),
        epilog=_runtime_env_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
