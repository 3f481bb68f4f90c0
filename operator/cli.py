"""``neuron-operator``: ``plan`` shows the pods a NeuronWorkload becomes, ``run`` reconciles.

``plan`` needs no cluster: it reads NeuronWorkload YAML and prints the planner's pods, so users
can try a layout before applying it, and the docs' examples are checked by the same code the
operator runs.  ``run`` imports kopf lazily, so ``plan`` starts fast and works without a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from neuron_cores import GROUP_SIZES_ENV
from neuron_cores.flags import Flag, add_flags
from neuron_operator.api import InvalidSpecError, Workload, workload_from_object
from neuron_operator.claims import resolve_allocation
from neuron_operator.planner import Plan, plan
from neuron_operator.pods import build_pod
from neuron_operator.refusals import pod_size_refusal
from neuron_operator.runner import add_run_command

EXIT_INVALID = 2
OUTPUTS = ("text", "yaml", "json")
PLAN_OUTPUT_FLAG = Flag(
    "--output",
    "NEURON_OPERATOR_PLAN_OUTPUT",
    "text: one line per pod; yaml/json: a List of Pod objects",
    "text",
    choices=OUTPUTS,
    aliases=("-o",),
)


def load_workloads(path: Path) -> list[Workload]:
    """Every NeuronWorkload in a YAML file (several documents allowed)."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    if not documents:
        raise InvalidSpecError([f"{path}: holds no YAML document; give a NeuronWorkload"])
    return [workload_from_object(d) for d in documents]


def offline_allocation(workload: Workload) -> str:
    """The allocation mode a plan printed without a cluster shows: DRA only when the spec says
    so (``Auto`` depends on the cluster's DeviceClasses, which ``plan`` does not read)."""
    return resolve_allocation(workload.spec.allocation, block_class_exists=False)


def _text_report(workload: Workload, result: Plan, mode: str, out: TextIO) -> None:
    pods = result.pods
    print(
        f"{workload.namespace}/{workload.name}: {len(pods)} pods "
        f"({len(result.layout)} per replica x {result.replicas} replicas), "
        f"{result.cores_per_replica} NeuronCores per replica, node cores {result.node_cores}",
        file=out,
    )
    for pod_plan in pods:
        manifest = build_pod(pod_plan, workload, mode)
        names = ",".join(m.name for m in pod_plan.load_order)
        print(
            f"  {manifest['metadata']['name']}  cores={pod_plan.cores}  "
            f"{GROUP_SIZES_ENV}={pod_plan.group_sizes_env}  models={names}",
            file=out,
        )


def plan_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        workloads = load_workloads(args.file)
    except InvalidSpecError as error:
        print(f"error: {args.file}: invalid NeuronWorkload:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, yaml.YAMLError) as error:
        print(f"error: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_INVALID
    return print_plans(workloads, str(args.file), args.output, out)


def print_plans(
    workloads: Sequence[Workload],
    source: str,
    output: str,
    out: TextIO,
    *,
    in_force: str | None = None,
) -> int:
    """Plan ``workloads`` and print them as ``plan`` does; 2 with the reason when one cannot be.

    ``kubectl neuron plan`` prints live NeuronWorkloads through this too, with ``in_force``: the
    allocation mode the operator resolved for them (``status.allocation``), which for ``Auto``
    depends on the cluster and so cannot be told from the spec.
    """

    def mode(workload: Workload) -> str:
        return in_force or offline_allocation(workload)

    try:
        plans = [(w, plan(w.spec)) for w in workloads]
    except InvalidSpecError as error:
        print(f"error: {source}: invalid NeuronWorkload:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    items: list[dict[str, Any]] = [
        build_pod(p, w, mode(w)) for w, result in plans for p in result.pods
    ]
    too_large = next((r for pod in items if (r := pod_size_refusal(pod))), None)
    if too_large is not None:  # the operator would refuse to send it (PodTooLarge)
        print(f"error: {source}: {too_large.describe()}", file=sys.stderr)
        return EXIT_INVALID
    if output == "text":
        for workload, result in plans:
            _text_report(workload, result, mode(workload), out)
        return 0
    pod_list = {"apiVersion": "v1", "kind": "List", "items": items}
    if output == "json":
        json.dump(pod_list, out, indent=2)
        out.write("\n")
    else:
        yaml.safe_dump(pod_list, out, sort_keys=False)
    return 0


def _add_plan(commands: Any) -> None:
    parser = commands.add_parser(
        "plan",
        help="print the pods a NeuronWorkload file becomes, without a cluster",
        description="Read NeuronWorkload YAML (FILE, or - for stdin) and print the planned pods.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="NeuronWorkload YAML file, or -")
    add_flags(parser, [PLAN_OUTPUT_FLAG])
    parser.set_defaults(func=plan_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-operator",
        description="Plan and reconcile NeuronWorkloads (neurongroups.dev/v1alpha1) into pods "
        "with NeuronCore Groups.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plan(commands)
    add_run_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
