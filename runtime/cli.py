"""``neuron-runtime``: inspect the node's cores and compile models.

Each subcommand is registered by one ``add_<name>_command(subparsers)`` function, so another
component (the serving layer) adds its own with one line in ``build_parser``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuron_cores.flags import Flag, add_flags, log_level_flag
from neuron_cores.logs import configure_logging
from neuron_runtime.arbiter import CoreArbiter, iter_states_text
from neuron_runtime.archs import ARCHS
from neuron_runtime.artifact import compile_model
from neuron_runtime.config import (
    DEFAULT_NODE_CORES,
    ENVIRONMENT_HELP,
    LOG_LEVEL_ENV,
    SIM_CORES_ENV,
    SIM_INSTANCE_TYPE_ENV,
    STATE_DIR_ENV,
    config_from_env,
)
from neuron_runtime.errors import NeuronRuntimeError
from neuron_runtime.serving.cli import add_serve_command

log = logging.getLogger(__name__)

# cores and compile; serve has its own (NEURON_LOG_LEVEL, default info), as the server it runs.
LOG_LEVEL_FLAG = log_level_flag(LOG_LEVEL_ENV, "warning")
# What the runtime reads from the environment: cores resolves these through config_from_env.
CORES_FLAGS = [
    Flag(
        "--state-dir",
        STATE_DIR_ENV,
        "arbiter state directory",
        shown_default="/tmp/neuron-sim-<uid>",
    ),
    Flag(
        "--node-cores",
        SIM_CORES_ENV,
        "node size in cores",
        shown_default=f"{DEFAULT_NODE_CORES}, or from --instance-type",
        metavar="N",
    ),
    Flag("--instance-type", SIM_INSTANCE_TYPE_ENV, "node size as an instance type"),
]


def _env_epilog() -> str:
    lines = ["environment variables read by the runtime:"]
    lines += [f"  {name:<27} {meaning}" for name, meaning in ENVIRONMENT_HELP]
    return "\n".join(lines)


def _cores(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.state_dir:
        env[STATE_DIR_ENV] = args.state_dir
    if args.node_cores is not None:
        env[SIM_CORES_ENV] = args.node_cores  # checked with the variable's own rules
        env.pop(SIM_INSTANCE_TYPE_ENV, None)
    if args.instance_type:
        env[SIM_INSTANCE_TYPE_ENV] = args.instance_type
        env.pop(SIM_CORES_ENV, None)
    config = config_from_env(env)
    states = CoreArbiter(config.state_dir, config.node_cores).snapshot()
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "core": s.core,
                "holder": None
                if s.holder is None
                else {"pid": s.holder.pid, "command": s.holder.command},
            }
            for s in states
        ]
        print(json.dumps({"state_dir": str(config.state_dir), "cores": rows}, indent=1))
    else:
        print(f"node: {config.node_cores} cores, state under {config.state_dir}")
        for line in iter_states_text(states):
            print(line)
    return 0


def add_cores_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cores",
        help="list the node's cores, each free or with its holder (pid, command)",
        description="List every core of the simulated node and which process holds it.",
        epilog=_env_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, CORES_FLAGS, resolve_later=True)  # config_from_env checks them
    add_flags(parser, [LOG_LEVEL_FLAG])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=_cores)


def _blocks(text: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(p) for p in text.split(","))
    except ValueError:
        blocks = ()
    if not blocks or any(b <= 0 for b in blocks):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma list of positive block counts such as '3,4,6,3'"
        )
    return blocks


def _compile(args: argparse.Namespace) -> int:
    size = {
        "width": args.width,
        "depth": args.depth,
        "input_dim": args.input_dim,
        "classes": args.classes,
        "image_size": args.image_size,
        "blocks": args.blocks,
    }
    out = compile_model(
        args.arch, args.cores, Path(args.out), seed=args.seed, name=args.name, **size
    )
    manifest = json.loads((out / "manifest.json").read_text())
    print(
        f"compiled {args.arch} for {manifest['cores']} NeuronCores into {out}: "
        f"{manifest['parameters']:,} parameters, stage GFLOPs "
        f"{[round(f / 1e9, 3) for f in manifest['stage_flops']]}"
    )
    return 0


def add_compile_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="build a model directory from a built-in architecture, pipelined over N cores",
        description=(
            "Build a model artifact (manifest.json + weights.bin) from a built-in architecture "
            "with weights drawn from --seed, split into --cores pipeline stages balanced by "
            "FLOPs. Size knobs: mlp takes --input-dim --width --depth --classes; resnet takes "
            "--image-size --width --blocks --classes; resnet50 is ResNet-50's real shape."
        ),
    )
    parser.add_argument("--arch", required=True, choices=ARCHS, help="architecture")
    parser.add_argument("--cores", required=True, type=int, help="NeuronCores to pipeline over")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--name", help="model name in the manifest (default: the arch)")
    parser.add_argument("--width", type=int, help="mlp: hidden width; resnet: base channels")
    parser.add_argument("--depth", type=int, help="mlp: hidden layers")
    parser.add_argument("--input-dim", type=int, help="mlp: input features")
    parser.add_argument("--classes", type=int, help="output classes")
    parser.add_argument("--image-size", type=int, help="resnet: input height and width")
    parser.add_argument("--blocks", type=_blocks, help="resnet: blocks per stage, e.g. 3,4,6,3")
    add_flags(parser, [LOG_LEVEL_FLAG])
    parser.set_defaults(func=_compile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-runtime",
        description="The group-aware inference runtime (NeuronCores simulated on CPU workers).",
        epilog=_env_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_cores_command(subparsers)
    add_compile_command(subparsers)
    add_serve_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve sets up its own logging from its own flags
        configure_logging(log_format="text", level=args.log_level)
    try:
        code: int = args.func(args)
    except (NeuronRuntimeError, ValueError) as exc:
        print(f"neuron-runtime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path the command cannot use (compile --out in a missing or read-only place, say).
        where = f" {exc.filename!r}" if exc.filename else ""
        print(
            f"neuron-runtime {args.command}: error: cannot use{where}: {exc.strerror or exc}; "
            "pick a path this user can write",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
