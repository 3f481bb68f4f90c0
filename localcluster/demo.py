"""``make demo``: the seed's scenarios as NeuronWorkloads on a real local control plane.

Why this shape: it is the README's first command, so it must show the whole system at once on a
fresh 2-core machine and leave something to poke at.  Steps: (1) build or reuse the binaries;
(2) start the cluster: two kwok-simulated inf1.6xlarge nodes and one emulated inf1.6xlarge whose
pods really run; (3) ``helm install`` the chart with its local-cluster values (no operator pod:
the operator runs here as a local process with the chart's service account and RBAC); (4) apply
the seed's three scenarios (deploy/samples 01-03: 16 copies in one process, 16 processes, 16
processes with two models each; 48 cores, exactly the three nodes) and wait until every
NeuronWorkload is Ready, printing progress; (5) print each node's cores with the pod and group
holding each one (``kubectl neuron cores``), and one inference answered by a pod on the emulated
node; (6) exit 0, leaving the cluster running.

The models are small stand-ins compiled under the seed's names (a ResNet-shaped network at 32x32,
not ResNet-50's real size) so that up to 32 serving processes fit a 2-core machine; the
placement, group sizes and load order are the real ones.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from neuron_cores import HTTP_PORT, MODELS_ENV, VISIBLE_CORES_ENV, decode_models
from neuron_localcluster import clitools, karpenter, processes
from neuron_localcluster.cluster import ClusterError, LocalCluster
from neuron_localcluster.node_files import ALLOCATIONS_FILE
from neuron_localcluster.startup import ensure_up, usage_lines

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "neuron-groups"
CHART_VALUES = CHART / "ci" / "local-cluster-values.yaml"
SAMPLES = REPO / "deploy" / "samples"
SCENARIOS = (
    "01-resnet50-shared.yaml",
    "02-resnet50-process.yaml",
    "03-two-models-context-switch.yaml",
)
RELEASE = "neuron-groups"
RELEASE_NAMESPACE = "neuron-groups"
DEMO_NAMESPACE = "demo"
WORKLOAD_RESOURCE = "neuronworkloads.neurongroups.dev"
# name -> (seed) of the stand-in models the scenarios load from /models/<name>
MODELS = {"resnet50": 0, "resnet50-v2": 1}

# ---- pure parts ----------------------------------------------------------------------------


def with_models_volume(workload: dict[str, Any], models_dir: Path) -> dict[str, Any]:
    """The workload with ``/models`` mounted from ``models_dir`` (a hostPath on this machine)."""
    spec = dict(workload["spec"])
    spec["volumes"] = [
        *[v for v in spec.get("volumes") or [] if v.get("name") != "models"],
        {"name": "models", "hostPath": {"path": str(models_dir), "type": "Directory"}},
    ]
    spec["volumeMounts"] = [
        *[m for m in spec.get("volumeMounts") or [] if m.get("mountPath") != "/models"],
        {"name": "models", "mountPath": "/models", "readOnly": True},
    ]
    return {**workload, "spec": spec}


def progress_line(workloads: Sequence[dict[str, Any]]) -> str:
    parts = []
    for wl in workloads:
        status = wl.get("status") or {}
        parts.append(
            f"{wl['metadata']['name']} {status.get('readyReplicas', 0)}/"
            f"{wl['spec'].get('replicas', 1)} ready"
        )
    return "; ".join(parts)


def all_ready(workloads: Sequence[dict[str, Any]]) -> bool:
    def ready(wl: dict[str, Any]) -> bool:
        conds = (wl.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    return bool(workloads) and all(ready(wl) for wl in workloads)


# ---- I/O -----------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def compile_models(folder: Path) -> None:
    runtime = Path(sys.executable).parent / "neuron-runtime"
    for name, seed in MODELS.items():
        out = folder / name
        if (out / "manifest.json").exists():
            continue
        cmd = [
            str(runtime),
            "compile",
            "--arch",
            "resnet",
            "--cores",
            "1",
            "--out",
            str(out),
            "--name",
            name,
            "--seed",
            str(seed),
            "--image-size",
            "32",
            "--width",
            "8",
            "--blocks",
            "1",
            "--classes",
            "10",
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        say(f"compiled stand-in model {name} into {out}")


def install_chart(cluster: LocalCluster) -> None:
    helm = clitools.ensure_helm()
    cmd = [
        str(helm),
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-f",
        str(CHART_VALUES),
        # the one host folder the scenarios mount (read-only): their compiled models
        "--set-json",
        f"workloadPolicy.allowedHostPaths={json.dumps([str(cluster.state_dir / 'models')])}",
        "--wait",
        "--timeout",
        "5m",
    ]
    if cluster.allocation == "dra":
        # The nodes offer their cores through DRA only; the cluster made the DeviceClasses.
        cmd += ["--set", "devicePlugin.enabled=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"helm install failed: {proc.stderr.strip() or proc.stdout.strip()}")
    say(f"chart installed: release {RELEASE} in namespace {RELEASE_NAMESPACE}")


def operator_account(cluster: LocalCluster) -> str:
    accounts = _json(cluster, "serviceaccounts", "-n", RELEASE_NAMESPACE)["items"]
    names = [a["metadata"]["name"] for a in accounts if "operator" in a["metadata"]["name"]]
    if not names:
        raise ClusterError(f"the chart created no operator service account in {RELEASE_NAMESPACE}")
    return str(names[0])


def start_operator(cluster: LocalCluster) -> None:
    if any(name == "operator" and ok for name, ok in cluster.processes()):
        say("operator already running")
        return
    account = operator_account(cluster)
    kubeconfig = cluster.impersonating_kubeconfig(
        RELEASE_NAMESPACE, account, expiration_seconds=7 * 24 * 3600
    )
    argv = [
        str(Path(sys.executable).parent / "neuron-operator"),
        "run",
        "--kubeconfig",
        str(kubeconfig),
        "--standalone",
        "--metrics-port",
        "0",
        "--lease-namespace",
        RELEASE_NAMESPACE,
        "--allowed-host-paths",
        str(cluster.state_dir / "models"),
    ]
    lay = cluster.layout
    processes.spawn(
        "operator",
        argv,
        pid_dir=lay.pids,
        log_file=lay.logs / "operator.log",
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    say(f"operator running locally as {RELEASE_NAMESPACE}/{account}")


def apply_scenarios(cluster: LocalCluster, models_dir: Path) -> list[str]:
    cluster.kubectl("create", "namespace", DEMO_NAMESPACE, check=False)
    names = []
    for index, file in enumerate(SCENARIOS):
        workload = with_models_volume(yaml.safe_load((SAMPLES / file).read_text()), models_dir)
        cluster.kubectl("-n", DEMO_NAMESPACE, "apply", "-f", "-", input=json.dumps(workload))
        name = str(workload["metadata"]["name"])
        names.append(name)
        say(f"applied {file} as NeuronWorkload {DEMO_NAMESPACE}/{name}")
        if index == 0:
            # The whole-node pod goes first, so the 1-core pods cannot fragment every node.
            _wait_scheduled(cluster, name)
    return names


def _wait_scheduled(cluster: LocalCluster, workload: str) -> None:
    def scheduled() -> bool:
        return _scheduled(cluster, workload)

    cluster.wait_for(scheduled, 120, f"{workload}'s pods to be scheduled")


def _scheduled(cluster: LocalCluster, workload: str) -> bool:
    pods = _json(
        cluster, "pods", "-n", DEMO_NAMESPACE, "-l", f"app.kubernetes.io/instance={workload}"
    )["items"]
    return bool(pods) and all(p["spec"].get("nodeName") for p in pods)


def wait_ready(
    cluster: LocalCluster,
    names: Sequence[str],
    print_: Callable[[str], None],
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        workloads = [_json(cluster, WORKLOAD_RESOURCE, n, "-n", DEMO_NAMESPACE) for n in names]
        line = progress_line(workloads)
        if line != last:
            print_(line)
            last = line
        if all_ready(workloads):
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"NeuronWorkloads not Ready after {timeout_s:.0f}s ({line}); see "
                f"`kubectl -n {DEMO_NAMESPACE} describe neuronworkloads` and the logs in "
                f"{cluster.layout.logs}"
            )
        time.sleep(3)


def print_core_maps(cluster: LocalCluster) -> None:
    """Each node's cores through ``kubectl neuron cores``, the plugin users run themselves.

    The emulated node publishes which pod holds which core (its containers'
    NEURON_RT_VISIBLE_CORES) as the Node annotation the plugin reads; on ``--allocation dra`` the
    plugin also reads the ResourceClaims' allocations, so kwok nodes show their holders too
    (with the device plugin, kwok nodes run nothing and it lists each pod's count).
    """
    plugin = Path(sys.executable).parent / "kubectl-neuron"
    proc = subprocess.run(
        [str(plugin), "--kubeconfig", str(cluster.kubeconfig), "cores"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    if proc.returncode != 0:
        raise ClusterError(f"kubectl neuron cores failed: {proc.stderr.strip()}")
    print(proc.stdout, end="", flush=True)


def one_inference(cluster: LocalCluster) -> None:
    node = cluster.emulated_node
    alloc = json.loads((cluster.layout.node_dir(node) / ALLOCATIONS_FILE).read_text())
    entry = next(iter(sorted(alloc.values(), key=lambda e: e["name"])), None)
    if entry is None:
        raise ClusterError(f"no demo pod runs on the emulated node {node}")
    models = decode_models(entry["envs"].get(MODELS_ENV, ""))
    model = models[0].name if models else "resnet50"
    base = f"http://{entry['podIP']}:{HTTP_PORT}/v2/models/{model}"
    with urllib.request.urlopen(base, timeout=10) as resp:
        meta = json.loads(resp.read())
    tensor = meta["inputs"][0]
    shape = [1 if d < 0 else d for d in tensor["shape"]]
    count = 1
    for dim in shape:
        count *= dim
    request = {
        "inputs": [
            {
                "name": tensor["name"],
                "shape": shape,
                "datatype": tensor["datatype"],
                "data": [0.5] * count,
            }
        ]
    }
    req = urllib.request.Request(
        f"{base}/infer",
        data=json.dumps(request).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    took = (time.monotonic() - started) * 1000
    out = answer["outputs"][0]
    data = out["data"]
    best = max(range(len(data)), key=lambda i: data[i])
    say(
        f"inference: pod {entry['name']} ({entry['podIP']}, cores "
        f"{entry['envs'].get(VISIBLE_CORES_ENV)}) model {model}: output {out['name']} "
        f"shape {out['shape']}, argmax {best} ({data[best]:.4f}), {took:.0f} ms"
    )


def run(
    state_dir: Path,
    *,
    kwok_nodes: str,
    emulated_nodes: str,
    autoscaler: karpenter.Settings | None = None,
    allocation: str = "device-plugin",
    ready_timeout_s: float = 900.0,
) -> int:
    """The demo; with ``autoscaler``, Karpenter adds the nodes the scenarios do not fit on;
    ``ready_timeout_s``: how long the scenarios may take to be Ready (``demo --ready-timeout``)."""
    started = time.monotonic()
    cluster = ensure_up(
        state_dir, kwok_nodes, emulated_nodes, autoscaler=autoscaler, allocation=allocation
    )
    models_dir = cluster.state_dir / "models"
    compile_models(models_dir)
    install_chart(cluster)
    start_operator(cluster)
    names = apply_scenarios(cluster, models_dir)
    say("waiting for the NeuronWorkloads to be Ready")
    wait_ready(cluster, names, lambda line: print(f"    {line}", flush=True), ready_timeout_s)
    say(f"all scenarios Ready after {time.monotonic() - started:.0f}s; cores per node:")
    print_core_maps(cluster)
    one_inference(cluster)
    for line in usage_lines(cluster):
        print(line)
    return 0
