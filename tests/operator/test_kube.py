"""``Kube.list_pods`` reads the pods a page at a time, following the API's continue tokens."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from neuron_operator.kube import PAGE_PODS, Kube


class PagedPods:
    """``list_namespaced_pod`` over ``count`` pods, ``limit`` at a time, like the API server."""

    def __init__(self, count: int) -> None:
        self.names = [f"p{i}" for i in range(count)]
        self.calls: list[dict[str, Any]] = []

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        start = int(kwargs.get("_continue") or 0)
        end = start + kwargs["limit"]
        items = [{"metadata": {"name": n}} for n in self.names[start:end]]
        meta = {"continue": str(end)} if end < len(self.names) else {}
        return SimpleNamespace(data=json.dumps({"items": items, "metadata": meta}).encode())


PAGE_CASES = [
    ("none", 0, 1),
    ("one-page", PAGE_PODS - 1, 1),
    ("exactly-a-page", PAGE_PODS, 1),
    ("pages", 3 * PAGE_PODS + 7, 4),
]


@pytest.mark.parametrize(
    ("count", "calls"), [c[1:] for c in PAGE_CASES], ids=[c[0] for c in PAGE_CASES]
)
def test_pods_are_listed_page_by_page(count: int, calls: int) -> None:
    kube = Kube(client.ApiClient(client.Configuration()))
    fake = PagedPods(count)
    kube.core = fake  # type: ignore[assignment]
    names = [p["metadata"]["name"] for p in kube.list_pods("ns", "w")]
    assert names == fake.names
    assert len(fake.calls) == calls
    assert all(c["limit"] == PAGE_PODS for c in fake.calls)
    assert all(
        c["label_selector"] == "app.kubernetes.io/name=neuron-workload,app.kubernetes.io/instance=w"
        for c in fake.calls
    )
