"""One reconcile against a scripted API: refusals reach status and Events, and writes back off."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from neuron_dra_driver.layout import NodeShape, pool_slices
from neuron_operator import conditions as c
from neuron_operator.claimkube import TemplateRefusedError
from neuron_operator.controller import Backoff, Reconciler
from neuron_operator.kube import ChildRefusedError
from neuron_operator.refusals import Refusal, classify_status, not_owned

NS, NAME, UID = "ns", "w", "uid-1"
QUOTA = 'pods "x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=0, limited: pods=0'
PSA = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": hostPath volumes'


def workload_body(copies: int = 1, isolation: str = "Process", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {
            "image": "neuron-groups/runtime:0.1.0",
            "nodeCores": 16,
            "isolation": isolation,
            "models": [{"name": "m", "path": "/models/m", "cores": 1, "copies": copies}],
            **spec,
        },
    }


def ready_pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(manifest)
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


class FakeKube:
    """The ``Kube`` calls of one reconcile, answered from a script; records every write."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.pods: dict[str, dict[str, Any]] = {}
        self.create_refusal: Refusal | None = None
        self.service_refusal: Refusal | None = None
        self.read_error: BaseException | None = None
        self.creates: list[str] = []
        self.deletes: list[str] = []
        self.events: list[tuple[str, str, str]] = []

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.read_error is not None:
            raise self.read_error
        return copy.deepcopy(self.body)

    def list_workloads(self, namespaces: Any) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.body)]

    def list_pods(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        return list(self.pods.values())

    def block_class_exists(self) -> bool:
        return False  # a device-plugin cluster: Auto means the device plugin

    def ensure_service(self, body: dict[str, Any], owner_uid: str) -> bool:
        if self.service_refusal is not None:
            raise ChildRefusedError(self.service_refusal)
        return False

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        self.creates.append(body["metadata"]["name"])
        if self.create_refusal is not None:
            raise ChildRefusedError(self.create_refusal)
        self.pods[body["metadata"]["name"]] = ready_pod(body)
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.deletes.append(name)
        return self.pods.pop(name, None) is not None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.body["status"] = copy.deepcopy(status)
        return True

    def post_event(self, workload: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def harness(
    body: dict[str, Any],
) -> tuple[FakeKube, Reconciler, Clock, list[float], list[Callable[[], None]]]:
    kube = FakeKube(body)
    clock = Clock()
    delays: list[float] = []
    retries: list[Callable[[], None]] = []

    def schedule(key: Any, delay: float, retry: Callable[[], None]) -> None:
        delays.append(delay)
        retries.append(retry)

    reconciler = Reconciler(
        kube,  # type: ignore[arg-type]
        backoff=Backoff(base=1.0, cap=8.0),
        schedule=schedule,
        clock=clock,
    )
    return kube, reconciler, clock, delays, retries


def condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    return dict(c.find(kube.body["status"]["conditions"], type_) or {})


def refusal(status: int, message: str) -> Refusal:
    return classify_status(status, message, "Pod", "w-pod")


REFUSAL_CASES = [
    ("pod-security", refusal(403, PSA), c.REASON_FORBIDDEN, "violates PodSecurity"),
    ("quota", refusal(403, QUOTA), c.REASON_QUOTA_EXCEEDED, "exceeded quota"),
    ("too-large", refusal(413, "Request entity too large"), c.REASON_POD_TOO_LARGE, "too large"),
    ("invalid", refusal(422, "quantities must match"), c.REASON_INVALID, "quantities must match"),
]


@pytest.mark.parametrize(
    ("refused", "reason", "quoted"),
    [x[1:] for x in REFUSAL_CASES],
    ids=[x[0] for x in REFUSAL_CASES],
)
def test_a_refused_pod_reaches_status_and_one_warning_event(
    refused: Refusal, reason: str, quoted: str, caplog: pytest.LogCaptureFixture
) -> None:
    kube, reconciler, _, delays, _ = harness(workload_body())
    kube.create_refusal = refused
    with caplog.at_level(logging.WARNING):
        reconciler.reconcile_by_name(NS, NAME)
    for type_ in (c.REFUSED, c.READY, c.PROGRESSING):
        assert condition(kube, type_)["reason"] == reason
        assert quoted in condition(kube, type_)["message"]
    assert condition(kube, c.REFUSED)["status"] == c.TRUE
    assert condition(kube, c.READY)["status"] == c.FALSE
    invalid = condition(kube, c.INVALID_SPEC)["status"]
    assert invalid == (c.TRUE if reason == c.REASON_INVALID else c.FALSE)
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", reason)]
    assert quoted in kube.events[0][2]
    assert delays == [1.0]
    assert all(record.exc_info is None for record in caplog.records)  # no traceback
    assert any(reason in record.getMessage() for record in caplog.records)


def test_refused_writes_back_off_exponentially_up_to_the_cap() -> None:
    kube, reconciler, clock, delays, retries = harness(workload_body())
    kube.create_refusal = refusal(403, QUOTA)
    reconciler.reconcile_by_name(NS, NAME)
    # Events of the object (or the resync) inside the wait do not send the refused create again.
    for _ in range(5):
        reconciler.reconcile_by_name(NS, NAME)
    assert len(kube.creates) == 1
    for _ in range(6):  # each scheduled retry, when due, tries once more and waits twice as long
        clock.now += delays[-1]
        retries[-1]()
    assert len(kube.creates) == 7
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    # Status and the Event are not repeated while the refusal stays the same.
    assert [r for _, r, _ in kube.events] == [c.REASON_QUOTA_EXCEEDED]


def test_the_refusal_clears_when_the_api_server_accepts_again() -> None:
    kube, reconciler, clock, delays, retries = harness(workload_body())
    kube.create_refusal = refusal(403, QUOTA)
    reconciler.reconcile_by_name(NS, NAME)
    kube.create_refusal = None  # the quota was raised
    clock.now += delays[-1]
    retries[-1]()
    assert condition(kube, c.REFUSED)["status"] == c.FALSE
    assert condition(kube, c.REFUSED)["reason"] == c.REASON_ACCEPTED
    reconciler.reconcile_by_name(NS, NAME)  # the new pod's event
    assert condition(kube, c.READY)["status"] == c.TRUE
    assert len(delays) == 1  # nothing more scheduled


def test_editing_the_spec_retries_at_once() -> None:
    kube, reconciler, _, _, _ = harness(workload_body())
    kube.create_refusal = refusal(403, PSA)
    reconciler.reconcile_by_name(NS, NAME)
    kube.create_refusal = None
    kube.body["metadata"]["generation"] = 2
    reconciler.reconcile_by_name(NS, NAME)
    assert len(kube.creates) == 2
    reconciler.reconcile_by_name(NS, NAME)  # the new pod's event
    assert condition(kube, c.READY)["status"] == c.TRUE


def test_a_scale_down_goes_on_while_creates_are_refused() -> None:
    kube, reconciler, _, _, _ = harness(workload_body(replicas=3))
    reconciler.reconcile_by_name(NS, NAME)
    first, *surplus = sorted(kube.pods)
    kube.body["metadata"]["generation"] = 2
    kube.body["spec"]["replicas"] = 1
    del kube.pods[first]  # deleted by hand: it must be created again, and the quota refuses it
    kube.create_refusal = refusal(403, QUOTA)
    reconciler.reconcile_by_name(NS, NAME)
    assert sorted(kube.deletes) == surplus  # the scale-down went on, freeing quota
    assert condition(kube, c.REFUSED)["reason"] == c.REASON_QUOTA_EXCEEDED


def test_a_roll_to_refused_pods_keeps_every_ready_old_pod() -> None:
    kube, reconciler, _, _, _ = harness(workload_body(copies=4))
    reconciler.reconcile_by_name(NS, NAME)
    assert len(kube.pods) == 4
    kube.body["metadata"]["generation"] = 2
    kube.body["spec"]["image"] = "neuron-groups/runtime:0.2.0"  # a new template: new pod names
    kube.create_refusal = refusal(403, PSA)
    reconciler.reconcile_by_name(NS, NAME)  # the refused creates
    reconciler.reconcile_by_name(NS, NAME)  # an event inside the backoff
    assert kube.deletes == []  # nothing lost: the old pods serve until the new ones can come
    assert condition(kube, c.REFUSED)["reason"] == c.REASON_FORBIDDEN


def test_a_foreign_service_makes_the_workload_not_ready_but_pods_are_created() -> None:
    kube, reconciler, _, _, _ = harness(workload_body())
    kube.service_refusal = not_owned("Service", NAME, NS, None)
    reconciler.reconcile_by_name(NS, NAME)
    reconciler.reconcile_by_name(NS, NAME)  # the pod's event, inside the Service's backoff
    assert len(kube.pods) == 1  # every pod is ready, yet the Service selects none of them
    assert kube.body["status"]["readyReplicas"] == 1
    assert condition(kube, c.READY)["status"] == c.FALSE
    assert condition(kube, c.READY)["reason"] == c.REASON_NOT_OWNED
    assert (
        f"Service {NS}/{NAME} exists and is not controlled" in condition(kube, c.REFUSED)["message"]
    )
    assert [r for _, r, _ in kube.events] == ["CreatedPods", c.REASON_NOT_OWNED]


def test_a_pod_predicted_too_large_is_never_sent() -> None:
    # 600 copies of one model in one group: NEURON_MODELS of 600 long name=path pairs > 128 KiB.
    long_path = "/models/" + "p" * 250
    body = workload_body(copies=600, isolation="Shared", cores=1)
    body["spec"]["models"][0]["path"] = long_path
    kube, reconciler, _, _, _ = harness(body)
    reconciler.reconcile_by_name(NS, NAME)
    assert kube.creates == []
    assert condition(kube, c.REFUSED)["reason"] == c.REASON_POD_TOO_LARGE
    assert "above the 128 KiB the kernel allows" in condition(kube, c.REFUSED)["message"]


def test_transient_trouble_is_retried_and_not_put_on_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube, reconciler, _, delays, _ = harness(workload_body())
    kube.create_refusal = refusal(503, "etcd leader changed")
    with caplog.at_level(logging.WARNING):
        reconciler.reconcile_by_name(NS, NAME)
    assert condition(kube, c.REFUSED)["status"] == c.FALSE
    assert condition(kube, c.READY)["status"] == c.FALSE
    assert kube.events == []
    assert delays == [1.0]
    assert all(record.exc_info is None for record in caplog.records)


def test_a_failing_read_is_retried_with_backoff_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube, reconciler, clock, delays, retries = harness(workload_body())
    kube.read_error = ApiException(status=503, reason="Service Unavailable")
    with caplog.at_level(logging.WARNING):
        reconciler.reconcile_by_name(NS, NAME)
        clock.now += delays[-1]
        retries[-1]()
    assert delays == [1.0, 2.0]
    assert all(record.exc_info is None for record in caplog.records)
    kube.read_error = None
    clock.now += delays[-1]
    retries[-1]()
    assert kube.creates and condition(kube, c.REFUSED)["status"] == c.FALSE
    assert len(delays) == 2


def test_backoff_doubles_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 9, 10, 500)] == [1, 2, 4, 256, 300, 300]


class FakeDraKube(FakeKube):
    """A cluster with the DRA driver's DeviceClass: templates and claims, scripted."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.templates: dict[str, str | None] = {}  # name -> controller uid
        self.order: list[str] = []

    def block_class_exists(self) -> bool:
        return True

    def ensure_claim_template(self, body: dict[str, Any], owner_uid: str) -> bool:
        name = body["metadata"]["name"]
        if name in self.templates and self.templates[name] != owner_uid:
            raise TemplateRefusedError(not_owned("ResourceClaimTemplate", name, NS, "Pod x"))
        self.order.append(f"template {name}")
        created = name not in self.templates
        self.templates[name] = owner_uid
        return created

    def list_claim_templates(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        return []

    def delete_claim_template(self, namespace: str, name: str) -> bool:
        return self.templates.pop(name, None) is not None

    def list_claims(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        return []

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        self.order.append("pod")
        return super().create_pod(body, owner_uid)


def test_auto_on_a_dra_cluster_makes_templates_before_claiming_pods() -> None:
    body = workload_body(copies=2)
    kube = FakeDraKube(body)
    reconciler = Reconciler(kube, schedule=lambda *_: None)  # type: ignore[arg-type]
    reconciler.reconcile_by_name(NS, NAME)
    assert kube.order == ["template w-cores-1", "pod", "pod"]
    for pod in kube.pods.values():
        assert pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] == "w-cores-1"
    status = kube.body["status"]
    assert (status["allocation"], status["allocatedCores"]) == ("DRA", [])


def test_a_claim_template_of_another_owner_is_refused_not_owned() -> None:
    kube = FakeDraKube(workload_body())
    kube.templates["w-cores-1"] = "someone-else"
    reconciler = Reconciler(kube, schedule=lambda *_: None)  # type: ignore[arg-type]
    reconciler.reconcile_by_name(NS, NAME)
    refused = condition(kube, c.REFUSED)
    assert (refused["status"], refused["reason"]) == (c.TRUE, c.REASON_NOT_OWNED)
    assert "ResourceClaimTemplate" in refused["message"]
    assert kube.templates["w-cores-1"] == "someone-else"
    assert not kube.creates  # a pod would claim through the foreign template


DRA_NO_ROOM = "0/2 nodes are available: 2 cannot allocate all claims."


class FakeFullDraKube(FakeDraKube):
    """A DRA cluster whose scheduler cannot place the pods' block claims; the slices of one
    64-core node, whose claims hold every even core (32 free, no two adjacent)."""

    def __init__(self, body: dict[str, Any], slices_error: BaseException | None = None) -> None:
        super().__init__(body)
        self.slices_error = slices_error
        self.free_reads = 0
        self.selectors: list[dict[str, str]] = []

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        self.creates.append(body["metadata"]["name"])
        pod = copy.deepcopy(body)
        reason = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        pod["status"] = {"phase": "Pending", "conditions": [{**reason, "message": DRA_NO_ROOM}]}
        self.pods[body["metadata"]["name"]] = pod
        return True

    def list_block_slices(self) -> list[dict[str, Any]]:
        self.free_reads += 1
        if self.slices_error is not None:
            raise self.slices_error
        shape = NodeShape("inf1.24xlarge", 16, 4)
        return pool_slices("big", shape, generation=1) + pool_slices(
            "gpu-pool", shape, generation=1
        )

    def list_node_names(self, selector: dict[str, str]) -> set[str]:
        self.selectors.append(selector)
        return {"big"} if selector == {"pool": "big"} else set()

    def list_all_claims(self) -> list[dict[str, Any]]:
        results = [
            {"driver": "neuroncores.neurongroups.dev", "pool": "big", "device": f"core-{n}"}
            for n in range(0, 64, 2)
        ]
        return [{"status": {"allocation": {"devices": {"results": results}}}}]


BIG_ONLY = {"pool": "big"}  # excludes gpu-pool, whose 64 cores are all free
FREE_READ_CASES = [
    (16, BIG_ONLY, None, c.REASON_NO_CONTIGUOUS_RUN, "node big has 32 free NeuronCores"),
    (33, BIG_ONLY, None, c.REASON_INSUFFICIENT_CORES, "no node has 33 free NeuronCores"),
    (16, {}, None, c.REASON_POD_UNSCHEDULABLE, "a node has a free run of 16 NeuronCores now"),
    (
        16,
        BIG_ONLY,
        ApiException(status=403, reason="Forbidden"),
        c.REASON_INSUFFICIENT_CORES,
        "is not known to the operator",
    ),
]


@pytest.mark.parametrize(
    ("cores", "selector", "error", "reason", "fragment"),
    FREE_READ_CASES,
    ids=["scattered", "too-few", "other-node-has-a-run", "slices-forbidden"],
)
def test_a_block_no_node_can_place_is_judged_from_the_nodes_free_cores(
    cores: int,
    selector: dict[str, str],
    error: BaseException | None,
    reason: str,
    fragment: str,
) -> None:
    body = workload_body(nodeCores=64, nodeSelector=selector)
    body["spec"]["models"][0]["cores"] = cores
    kube = FakeFullDraKube(body, error)
    reconciler = Reconciler(kube, schedule=lambda *_: None)  # type: ignore[arg-type]
    reconciler.reconcile_by_name(NS, NAME)  # creates the pod
    assert kube.free_reads == 0  # nothing stuck yet: no extra reads
    reconciler.reconcile_by_name(NS, NAME)  # sees it Unschedulable
    assert kube.free_reads == 1
    reconciler.reconcile_by_name(NS, NAME)  # within FREE_CORES_SECONDS (or failed): read again
    assert kube.free_reads == (2 if error is not None else 1)
    assert kube.selectors == ([selector] * 2 if selector and error is None else [])
    found = condition(kube, c.UNSCHEDULABLE)
    assert (found["status"], found["reason"]) == (c.TRUE, reason)
    assert fragment in found["message"], found["message"]
    assert DRA_NO_ROOM in found["message"]


class FakePlacedKube(FakeKube):
    """A device-plugin cluster: pods land on node-a, whose plugin publishes its record."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.records: dict[str, str] = {}
        self.records_error: BaseException | None = None
        self.record_reads = 0

    def create_pod(self, body: dict[str, Any], owner_uid: str) -> bool:
        created = super().create_pod(body, owner_uid)
        self.pods[body["metadata"]["name"]]["spec"]["nodeName"] = "node-a"
        return created

    def node_records(self) -> dict[str, str]:
        self.record_reads += 1
        if self.records_error is not None:
            raise self.records_error
        return dict(self.records)


def test_device_plugin_pods_cores_come_from_their_nodes_record() -> None:
    kube = FakePlacedKube(workload_body(copies=2))
    reconciler = Reconciler(kube, schedule=lambda *_: None)  # type: ignore[arg-type]
    reconciler.reconcile_by_name(NS, NAME)  # creates the pods: none placed yet, nothing read
    assert kube.record_reads == 0
    assert kube.body["status"]["allocatedCores"] == []
    first, second = sorted(kube.pods)
    kube.records = {
        "node-a": json.dumps(
            {"version": 1, "cores": 16, "pods": {f"{NS}/{first}": "3", f"{NS}/{second}": "5"}}
        )
    }
    reconciler.reconcile_by_name(NS, NAME)
    status = kube.body["status"]
    assert status["allocatedCores"] == [
        {"pod": first, "node": "node-a", "cores": "3"},
        {"pod": second, "node": "node-a", "cores": "5"},
    ]
    assert status["allocatedSummary"] == "node-a: 3 5"
    kube.records_error = ApiException(status=403, reason="Forbidden")
    reconciler.reconcile_by_name(NS, NAME)  # cannot read: what status said is kept
    assert kube.body["status"]["allocatedCores"] == status["allocatedCores"]
