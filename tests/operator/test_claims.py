"""DRA mode: allocation resolution, pods with claims, templates, their lifecycle, claims' cores."""

from __future__ import annotations

from typing import Any

import pytest

from neuron_dra_driver.layout import Block
from neuron_operator import conditions as c
from neuron_operator.api import Workload, parse_spec
from neuron_operator.claimkube import TemplateRefusedError
from neuron_operator.claims import (
    allocated_cores,
    allocated_summary,
    claim_cores,
    device_cores,
    recorded_cores,
    resolve_allocation,
    surplus_templates,
    template_name,
)
from neuron_operator.drasync import sync, template_bodies
from neuron_operator.planner import plan
from neuron_operator.pods import build_pod, template_hash
from neuron_operator.refusals import not_owned

SPEC: dict[str, Any] = {
    "image": "img",
    "instanceType": "inf1.6xlarge",
    "isolation": "Process",
    "models": [
        {"name": "a", "path": "/models/a", "cores": 4},
        {"name": "b", "path": "/models/b", "cores": 2, "copies": 2},
    ],
}
UID = "uid-1"


def workload(**overrides: Any) -> Workload:
    return Workload(name="w", namespace="ns", uid=UID, spec=parse_spec({**SPEC, **overrides}))


RESOLVE = [
    ("auto-with-class", "Auto", True, "DRA"),
    ("auto-without-class", "Auto", False, "DevicePlugin"),
    ("dra-without-class", "DRA", False, "DRA"),
    ("device-plugin-with-class", "DevicePlugin", True, "DevicePlugin"),
]


@pytest.mark.parametrize(
    ("requested", "exists", "mode"), [r[1:] for r in RESOLVE], ids=[r[0] for r in RESOLVE]
)
def test_resolve_allocation(requested: str, exists: bool, mode: str) -> None:
    assert resolve_allocation(requested, exists) == mode


def test_device_plugin_hash_is_unchanged_and_dra_rolls() -> None:
    before = template_hash(parse_spec(SPEC))  # no spec.allocation: the hash of earlier releases
    for given in ("Auto", "DevicePlugin"):
        assert template_hash(parse_spec({**SPEC, "allocation": given}), "DevicePlugin") == before
    dra = template_hash(parse_spec({**SPEC, "allocation": "DRA"}), "DRA")
    assert dra != before
    assert template_hash(parse_spec(SPEC), "DRA") == dra  # Auto resolved to DRA: the same pods


def test_dra_pods_claim_one_block_of_their_size_and_no_extended_resource() -> None:
    w = workload(allocation="DRA", resources={"limits": {"memory": "1Gi"}})
    result = plan(w.spec)
    pods = [build_pod(p, w, "DRA") for p in result.pods]
    assert sorted({p.cores for p in result.pods}) == [2, 4]
    for pod, planned in zip(pods, result.pods, strict=True):
        container = pod["spec"]["containers"][0]
        assert "aws.amazon.com/neuroncore" not in str(container["resources"])
        assert container["resources"]["claims"] == [{"name": "neuroncores"}]
        assert container["resources"]["limits"] == {"memory": "1Gi"}
        assert pod["spec"]["resourceClaims"] == [
            {"name": "neuroncores", "resourceClaimTemplateName": f"w-cores-{planned.cores}"}
        ]
    device_plugin = build_pod(result.pods[0], w)
    assert "resourceClaims" not in device_plugin["spec"]
    assert device_plugin["spec"]["containers"][0]["resources"]["limits"][
        "aws.amazon.com/neuroncore"
    ] == str(result.pods[0].cores)


def test_templates_one_per_pod_size_owned_and_labelled() -> None:
    w = workload(allocation="DRA")
    bodies = template_bodies(w, [p.cores for p in plan(w.spec).layout])
    assert [b["metadata"]["name"] for b in bodies] == ["w-cores-2", "w-cores-4"]
    for body, cores in zip(bodies, (2, 4), strict=True):
        assert body["kind"] == "ResourceClaimTemplate"
        assert body["metadata"]["ownerReferences"][0]["uid"] == UID
        assert body["spec"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "w"
        (request,) = body["spec"]["spec"]["devices"]["requests"]
        assert request["exactly"]["deviceClassName"] == "neuroncores.neurongroups.dev"
        expression = request["exactly"]["selectors"][0]["cel"]["expression"]
        assert expression.endswith(f".cores == {cores}")


DEVICES = [
    ("block", "cores-4-7", (4, 5, 6, 7)),
    ("single", "core-3", (3,)),
    ("reversed", "cores-7-4", None),
    ("not-a-number", "cores-a-b", None),
    ("other", "gpu-0", None),
]


@pytest.mark.parametrize(("device", "cores"), [d[1:] for d in DEVICES], ids=[d[0] for d in DEVICES])
def test_device_cores(device: str, cores: tuple[int, ...] | None) -> None:
    assert device_cores(device) == cores


def claim(pod: str, device: str | None, *, driver: str = "neuroncores.neurongroups.dev") -> Any:
    body: dict[str, Any] = {
        "metadata": {"ownerReferences": [{"kind": "Pod", "name": pod, "controller": True}]}
    }
    if device is not None:
        body["status"] = {
            "allocation": {
                "devices": {"results": [{"driver": driver, "pool": "node-a", "device": device}]}
            }
        }
    return body


def test_allocated_cores_in_pod_order_only_when_allocated() -> None:
    claims = [
        claim("p2", "core-9"),
        claim("p1", "cores-0-3"),
        claim("p3", None),
        claim("p4", "cores-0-1", driver="other.dev"),
    ]
    assert claim_cores(claims[2]) is None
    assert allocated_cores(claims, ["p1", "p2", "p3", "p4"]) == [
        {"pod": "p1", "node": "node-a", "cores": "0-3"},
        {"pod": "p2", "node": "node-a", "cores": "9"},
    ]


SURPLUS = [
    ("keeps-wanted", ["w-cores-2", "w-cores-4"], ["w-cores-2"], False, ["w-cores-4"]),
    ("waits-for-roll", ["w-cores-2", "w-cores-4"], ["w-cores-2"], True, []),
    ("all-when-device-plugin", ["w-cores-2"], [], False, ["w-cores-2"]),
]


@pytest.mark.parametrize(
    ("existing", "wanted", "rolling", "surplus"),
    [s[1:] for s in SURPLUS],
    ids=[s[0] for s in SURPLUS],
)
def test_surplus_templates(
    existing: list[str], wanted: list[str], rolling: bool, surplus: list[str]
) -> None:
    assert surplus_templates(existing, wanted, rolling=rolling) == surplus


class FakeClaims:
    def __init__(self, templates: dict[str, str], refuse: str | None = None) -> None:
        self.templates = templates  # name -> controller uid
        self.refuse = refuse
        self.calls: list[str] = []

    def ensure_claim_template(self, body: Any, owner_uid: str) -> bool:
        name = body["metadata"]["name"]
        self.calls.append(f"ensure {name}")
        if name == self.refuse:
            raise TemplateRefusedError(not_owned("ResourceClaimTemplate", name, "ns", "Pod x"))
        created = name not in self.templates
        self.templates.setdefault(name, owner_uid)
        return created

    def list_claim_templates(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        self.calls.append("list templates")
        return [
            {
                "metadata": {
                    "name": n,
                    "ownerReferences": [
                        {
                            "apiVersion": "neurongroups.dev/v1alpha1",
                            "kind": "NeuronWorkload",
                            "uid": uid,
                            "controller": True,
                        }
                    ],
                }
            }
            for n, uid in self.templates.items()
        ]

    def delete_claim_template(self, namespace: str, name: str) -> bool:
        self.calls.append(f"delete {name}")
        return self.templates.pop(name, None) is not None

    def list_claims(self, namespace: str, workload: str) -> list[dict[str, Any]]:
        self.calls.append("list claims")
        return [claim("w-p-0-0", "cores-0-3")]


def run(kube: FakeClaims, mode: str, *, was_dra: bool = False, rolling: bool = False) -> Any:
    w = workload()
    return sync(
        kube,
        w,
        allocation=mode,
        was_dra=was_dra,
        pod_cores=[p.cores for p in plan(w.spec).layout],
        rolling=rolling,
        holding=frozenset(),
        pods=["w-p-0-0"],
    )


def test_dra_creates_templates_removes_surplus_and_reads_cores() -> None:
    kube = FakeClaims({"w-cores-8": UID, "w-cores-1": "someone-else"})
    out = run(kube, "DRA")
    assert out.created == ["w-cores-2", "w-cores-4"]
    assert out.deleted == ["w-cores-8"]  # ours and unused; another owner's is never touched
    assert out.templates == ["w-cores-2", "w-cores-4"]
    assert out.allocated == [{"pod": "w-p-0-0", "node": "node-a", "cores": "0-3"}]
    assert set(kube.templates) == {"w-cores-1", "w-cores-2", "w-cores-4"}


def test_a_template_name_taken_is_refused_not_owned() -> None:
    kube = FakeClaims({}, refuse=template_name("w", 2))
    out = run(kube, "DRA")
    assert [r.reason for r in out.refusals] == [c.REASON_NOT_OWNED]
    assert "ensure w-cores-4" not in kube.calls


def test_device_plugin_mode_reads_nothing_unless_templates_are_left() -> None:
    kube = FakeClaims({"w-cores-2": UID})
    assert run(kube, "DevicePlugin").templates is None
    assert kube.calls == []
    kept = run(kube, "DevicePlugin", was_dra=True, rolling=True)
    assert kept.deleted == [] and kept.templates == ["w-cores-2"]
    done = run(kube, "DevicePlugin", was_dra=True)
    assert done.deleted == ["w-cores-2"] and done.templates == []
    assert done.allocated is None


def test_allocated_summary_groups_by_node() -> None:
    allocated = [
        {"pod": "p1", "node": "n2", "cores": "0"},
        {"pod": "p2", "node": "n1", "cores": "0-3"},
        {"pod": "p3", "node": "n1", "cores": "4-7"},
    ]
    assert allocated_summary(allocated) == "n1: 0-3 4-7; n2: 0"
    assert allocated_summary([]) == ""


@pytest.mark.parametrize(
    ("first", "size"),
    [(3, 1), (0, 6), (14, 2), (32, 32)],
    ids=["one-core", "six-from-zero", "top-pair", "upper-half-of-64"],
)
def test_device_cores_reads_the_driver_device_names(first: int, size: int) -> None:
    assert device_cores(Block(first, size).name) == tuple(range(first, first + size))


RECORD = (
    '{"version":1,"cores":16,"pods":{"ns/p1":"0-3","ns/p2":"4,6","other/p3":"8"},"unhealthy":""}'
)
RECORDED_CASES = [
    ("contiguous", [("p1", "n")], {"n": RECORD}, [{"pod": "p1", "node": "n", "cores": "0-3"}]),
    ("scattered", [("p2", "n")], {"n": RECORD}, [{"pod": "p2", "node": "n", "cores": "4,6"}]),
    ("another-namespace-same-name", [("p3", "n")], {"n": RECORD}, []),
    ("node-without-record", [("p1", "m")], {"n": RECORD}, []),
    ("unreadable-record", [("p1", "n")], {"n": "{not json"}, []),
    ("not-yet-started", [("p9", "n")], {"n": RECORD}, []),
]


@pytest.mark.parametrize(
    ("pods", "records", "expected"),
    [r[1:] for r in RECORDED_CASES],
    ids=[r[0] for r in RECORDED_CASES],
)
def test_recorded_cores_from_the_nodes_allocation_records(
    pods: list[tuple[str, str]], records: dict[str, str], expected: list[dict[str, str]]
) -> None:
    assert recorded_cores("ns", pods, records) == expected
