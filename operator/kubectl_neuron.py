"""``kubectl neuron``: a kubectl plugin (the executable ``kubectl-neuron``) for NeuronCores.

``cores [NODE...]``: each node's NeuronCores, the pod, NeuronWorkload and group holding each one;
``plan FILE|NAME``: what ``neuron-operator plan`` prints, for a file or a live NeuronWorkload;
``why POD|NWL``: why a pod (or a NeuronWorkload's pods) is Pending, in words.

Only this module talks to the API server (reads only: nodes, pods, events, NeuronWorkloads);
the reasoning is ``neuron_operator.coremap``, pure.  The flags are kubectl's own
(``--kubeconfig``, ``--context``, ``-n/--namespace``, ``-A/--all-namespaces``, ``-o``), because
kubectl passes a plugin its arguments as given.  See docs/kubectl-neuron.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from neuron_cores import CORE_RESOURCE
from neuron_dra_driver.classes import block_size
from neuron_dra_driver.layout import DRIVER_NAME
from neuron_operator import coremap
from neuron_operator.api import (
    ALLOCATION_DEVICE_PLUGIN,
    ALLOCATION_DRA,
    API_VERSION,
    GROUP,
    PLURAL,
    VERSION,
    InvalidSpecError,
)
from neuron_operator.api import workload_from_object as parse_workload
from neuron_operator.claims import claim_owner_pod
from neuron_operator.cli import EXIT_INVALID, OUTPUTS, load_workloads, print_plans
from neuron_operator.pods import selector_labels

# What status.allocation may say: the mode the operator resolved (never Auto).
ALLOCATION_MODES_IN_FORCE = (ALLOCATION_DEVICE_PLUGIN, ALLOCATION_DRA)

EXIT_ERROR = 1
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_MISSING = "the NeuronWorkload CRD"


class PluginError(Exception):
    """A failure to report in one line (exit 1): no cluster, no CRD, access denied, not found."""

    def __init__(self, message: str, *, status: int | None = None, crd_missing: bool = False):
        super().__init__(message)
        self.status = status
        self.crd_missing = crd_missing


class Cluster:
    """The few reads the plugin makes, each turning an API error into a clear ``PluginError``."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        configuration = client.Configuration()
        load: Any = config.load_kube_config
        try:
            if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                load(config_file=kubeconfig, context=context, client_configuration=configuration)
            else:
                incluster: Any = config.load_incluster_config
                incluster(client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise PluginError(
                f"cannot load a kubeconfig from {where}"
                + (f" (context {context})" if context else "")
                + f": {exc}; pass --kubeconfig FILE and --context NAME"
            ) from exc
        self.namespace = _context_namespace(kubeconfig, context)
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            response = call(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            message = explain_api_error(what, exc.status, exc.body)
            raise PluginError(
                message, status=exc.status, crd_missing=message.startswith(CRD_MISSING)
            ) from exc
        except HTTPError as exc:
            raise PluginError(f"cannot reach the API server to {what}: {exc}") from exc
        return json.loads(response.data)

    def nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("list nodes", self.core.list_node)["items"]
        return items

    def pods(self, namespace: str | None, **kwargs: Any) -> list[dict[str, Any]]:
        if namespace is None:
            body = self._call(
                "list pods in all namespaces", self.core.list_pod_for_all_namespaces, **kwargs
            )
        else:
            body = self._call(
                f"list pods in namespace {namespace}",
                self.core.list_namespaced_pod,
                namespace,
                **kwargs,
            )
        items: list[dict[str, Any]] = body["items"]
        return items

    def _dra_list(self, what: str, call: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
        """A list of resource.k8s.io objects; empty where the cluster does not serve that API
        (404) or the user may not read it (403): the map then shows what the pods and nodes
        say, as on device-plugin clusters, instead of failing."""
        try:
            items: list[dict[str, Any]] = self._call(what, call, **kwargs)["items"]
        except PluginError as exc:
            if exc.status in (403, 404):
                return []
            raise
        return items

    def claims(self, namespace: str | None) -> list[dict[str, Any]]:
        """ResourceClaims (DRA): whose cores their allocations hold."""
        api = client.ResourceV1Api(self.api)
        if namespace is None:
            return self._dra_list(
                "list resourceclaims in all namespaces",
                api.list_resource_claim_for_all_namespaces,
            )
        return self._dra_list(
            f"list resourceclaims in namespace {namespace}",
            api.list_namespaced_resource_claim,
            namespace=namespace,
        )

    def dra_nodes(self) -> set[str]:
        """The nodes whose cores the DRA driver publishes (its ResourceSlices' pools)."""
        slices = self._dra_list(
            "list resourceslices",
            client.ResourceV1Api(self.api).list_resource_slice,
            field_selector=f"spec.driver={DRIVER_NAME}",
        )
        return {str((s.get("spec") or {}).get("nodeName")) for s in slices}

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(
            f"get pod {name} in namespace {namespace}",
            self.core.read_namespaced_pod,
            name,
            namespace,
        )

    def workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(
            f"get NeuronWorkload {name} in namespace {namespace}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )

    def _get(self, what: str, call: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """The object, or None when it does not exist (a missing CRD is still an error)."""
        try:
            found: dict[str, Any] = self._call(what, call, *args)
        except PluginError as exc:
            if exc.status == 404 and not exc.crd_missing:
                return None
            raise
        return found

    def scheduler_messages(self, namespace: str, name: str) -> list[str]:
        body = self._call(
            f"list events in namespace {namespace}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}",
        )
        events = sorted(
            (e for e in body["items"] if e.get("reason") == "FailedScheduling"),
            key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "",
        )
        return [str(e.get("message", "")).strip() for e in events[-1:]]


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    try:
        listing: Any = config.list_kube_config_contexts
        contexts, active = listing(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def explain_api_error(what: str, status: int | None, body: object) -> str:
    """One line for an API error: access denied names the right to ask for; 404 of the CRD."""
    message = ""
    if isinstance(body, bytes | str):
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace") if isinstance(body, bytes) else body
    if status == 403:
        return (
            f"access denied: cannot {what} ({message or 'forbidden'}); ask your cluster admin "
            "for get/list on that resource, or narrow the request with -n NAMESPACE"
        )
    if status == 401:
        return f"not authenticated: cannot {what}; check --kubeconfig/--context ({message})"
    if status == 404 and "NeuronWorkload" in what and "could not find the requested" in message:
        return (
            f"{CRD_MISSING} ({CRD_NAME}, {API_VERSION}) is not installed in this cluster; "
            "install the neuron-groups chart (docs/install.md)"
        )
    return f"cannot {what}: HTTP {status}: {message}"


# ---- commands --------------------------------------------------------------------------------


def cores_command(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    nodes = cluster.nodes()
    if args.nodes:
        known = {n["metadata"]["name"] for n in nodes}
        missing = [n for n in args.nodes if n not in known]
        if missing:
            raise PluginError(f"no node named {', '.join(missing)}; see `kubectl get nodes`")
        nodes = [n for n in nodes if n["metadata"]["name"] in args.nodes]
    dra_nodes = cluster.dra_nodes()
    if not args.nodes:
        nodes = [n for n in nodes if coremap.is_neuron_node(n, dra_nodes)]
    namespace = None if args.all_namespaces or not args.namespace_given else args.namespace
    pods = cluster.pods(namespace)
    claims = cluster.claims(namespace)
    views = [
        coremap.node_cores(n, pods, claims, dra=n["metadata"]["name"] in dra_nodes)
        for n in sorted(nodes, key=lambda n: n["metadata"]["name"])
    ]
    if args.output == "json":
        json.dump({"nodes": [coremap.to_json(v) for v in views]}, out, indent=2)
        out.write("\n")
    elif not views:
        print(f"no node offers NeuronCores ({CORE_RESOURCE})", file=out)
    else:
        print("\n\n".join("\n".join(coremap.text_lines(v)) for v in views), file=out)
    return 0


def plan_command(
    args: argparse.Namespace, cluster_factory: Callable[[], Cluster], out: TextIO
) -> int:
    target = args.target
    if target == "-" or Path(target).is_file():
        try:
            workloads = load_workloads(Path(target))
        except InvalidSpecError as error:
            print(f"error: {target}: invalid NeuronWorkload:", file=sys.stderr)
            for problem in error.problems:
                print(f"  - {problem}", file=sys.stderr)
            return EXIT_INVALID
        except OSError as error:
            raise PluginError(f"cannot read {target}: {error}") from error
        return print_plans(workloads, target, args.output, out)
    cluster = cluster_factory()
    namespace = args.namespace if args.namespace_given else cluster.namespace
    found = cluster.workload(namespace, target)
    if found is None:
        raise PluginError(
            f"{target} is neither a file nor a NeuronWorkload in namespace {namespace}; give a "
            "file path, or the name of a NeuronWorkload (-n NAMESPACE)"
        )
    try:
        workload = parse_workload(found, default_namespace=namespace)
    except InvalidSpecError as error:
        print(f"error: NeuronWorkload {namespace}/{target}: invalid spec:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    in_force = (found.get("status") or {}).get("allocation")
    return print_plans(
        [workload],
        f"NeuronWorkload {namespace}/{target}",
        args.output,
        out,
        in_force=in_force if in_force in ALLOCATION_MODES_IN_FORCE else None,
    )


def why_command(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    namespace = args.namespace if args.namespace_given else cluster.namespace
    pod = cluster.pod(namespace, args.target)
    if pod is not None:
        pods = [pod]
        subject = f"pod {namespace}/{args.target}"
    else:
        workload = cluster.workload(namespace, args.target)
        if workload is None:
            raise PluginError(
                f"no pod or NeuronWorkload named {args.target} in namespace {namespace}; "
                "check the name and -n NAMESPACE"
            )
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(args.target).items())
        pods = cluster.pods(namespace, label_selector=selector)
        subject = f"NeuronWorkload {namespace}/{args.target}"
        if not pods:
            print(
                f"{subject} has no pods: the operator has not created any (is it running and "
                f"serving {namespace}? its conditions InvalidSpec and Refused say why not: "
                f"kubectl describe nwl {args.target} -n {namespace})",
                file=out,
            )
            return 0
    nodes = cluster.nodes()
    all_pods = cluster.pods(None)  # free cores count every namespace's pods
    claims, dra_nodes = cluster.claims(None), cluster.dra_nodes()
    views = {
        n["metadata"]["name"]: coremap.node_cores(
            n, all_pods, claims, dra=n["metadata"]["name"] in dra_nodes
        )
        for n in nodes
    }
    # a DRA pod asks for its cores through ResourceClaims (made from its templates): their blocks
    blocks: dict[str, int] = {}
    for claim in claims:
        owner = claim_owner_pod(claim)
        if owner and (claim.get("metadata") or {}).get("namespace") == namespace:
            blocks[owner] = blocks.get(owner, 0) + block_size(claim)
    report = []
    for item in pods:
        name = item["metadata"]["name"]
        placed = bool(item["spec"].get("nodeName"))
        messages = [] if placed else cluster.scheduler_messages(namespace, name)
        reasons = coremap.why_pending(
            item, nodes, views, messages, claimed_cores=blocks.get(name, 0)
        )
        # Of a NeuronWorkload, only the pods with something to say: unplaced, failed or scattered.
        if pod is not None or not placed or len(reasons) > 1 or "failed on node" in reasons[0]:
            report.append((name, reasons))
    if pod is None and not report:
        print(
            f"{subject}: each of its {len(pods)} pods has a node and contiguous cores (where "
            "the node reports them)",
            file=out,
        )
        return 0
    if args.output == "json":
        json.dump([{"pod": n, "reasons": r} for n, r in report], out, indent=2)
        out.write("\n")
        return 0
    print(f"{subject}:", file=out)
    for name, reasons in report:
        print(f"  {name}", file=out)
        for reason in reasons:
            print(f"    - {reason}", file=out)
    return 0


# ---- parser ----------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """kubectl's flags; accepted before and after the command (a subcommand keeps an earlier
    value: its defaults are suppressed)."""
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)", **keep
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)", **keep)
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the context's, else default)", **keep
    )
    flag: dict[str, Any] = {"default": False} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="cores: pods of every namespace (the default unless -n is given)",
        **flag,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl neuron",
        description="NeuronCores in a cluster: which pod holds which core, plans, and why a pod "
        "is Pending. A kubectl plugin: the executable kubectl-neuron on PATH.",
    )
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cores = commands.add_parser(
        "cores", help="each node's NeuronCores with the pod, NeuronWorkload and group holding each"
    )
    cores.add_argument(
        "nodes", nargs="*", metavar="NODE", help="nodes (default: every Neuron node)"
    )
    cores.add_argument("-o", "--output", choices=("text", "json"), default="text")
    plan = commands.add_parser(
        "plan", help="the plan of a NeuronWorkload file or of a live NeuronWorkload"
    )
    plan.add_argument("target", metavar="FILE|NAME", help="a YAML file, - for stdin, or a name")
    plan.add_argument("-o", "--output", choices=OUTPUTS, default="text")
    why = commands.add_parser("why", help="why a pod, or a NeuronWorkload's pods, are Pending")
    why.add_argument("target", metavar="POD|NWL", help="a pod or NeuronWorkload name")
    why.add_argument("-o", "--output", choices=("text", "json"), default="text")
    for sub in (cores, plan, why):
        _add_common(sub, top=False)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.namespace_given = args.namespace is not None
    if args.namespace is None:
        args.namespace = "default"

    def connect() -> Cluster:
        return Cluster(args.kubeconfig, args.context)

    try:
        if args.command == "plan":
            return plan_command(args, connect, stream)
        cluster = connect()
        if args.command == "cores":
            return cores_command(args, cluster, stream)
        return why_command(args, cluster, stream)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
