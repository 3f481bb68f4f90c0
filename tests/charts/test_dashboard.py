"""The Grafana dashboard only queries metrics the operator, device plugin and runtime export."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "neuron-groups" / "dashboards" / "neuron-groups.json"
SOURCES = ("operator", "device_plugin", "runtime")
_DECLARED = re.compile(r'(Counter|Gauge|Histogram|Summary)\(\s*"(neuron_[a-z0-9_]+)"')


def exported_series() -> set[str]:
    """Series names prometheus_client exposes for every metric declared in the components."""
    series: set[str] = set()
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            for kind, name in _DECLARED.findall(path.read_text()):
                if kind == "Counter":
                    series.add(name if name.endswith("_total") else f"{name}_total")
                elif kind in ("Histogram", "Summary"):
                    series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                else:
                    series.add(name)
    return series


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def test_sources_declare_metrics_of_all_three_components() -> None:
    series = exported_series()
    for prefix in ("neuron_operator_", "neuron_device_plugin_", "neuron_serving_"):
        assert any(s.startswith(prefix) for s in series), prefix


@pytest.mark.parametrize(
    "prefix",
    ["neuron_operator_", "neuron_device_plugin_", "neuron_serving_"],
    ids=["operator", "device-plugin", "runtime"],
)
def test_dashboard_covers_each_component(prefix: str) -> None:
    assert any(prefix in expr for expr in dashboard_exprs())


def test_every_queried_series_is_exported() -> None:
    series = exported_series()
    queried = {m for expr in dashboard_exprs() for m in re.findall(r"neuron_[a-z0-9_]+", expr)}
    assert queried
    assert not queried - series, f"dashboard queries unknown series: {sorted(queried - series)}"


def test_panels_have_unique_ids_and_a_datasource_variable() -> None:
    data = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    assert data["templating"]["list"][0]["type"] == "datasource"


def test_dashboard_configmap_renders_the_json(render: Callable[..., list[dict[str, Any]]]) -> None:
    objs = render(set_values=["grafanaDashboard.enabled=true"])
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["neuron-groups.json"]) == json.loads(DASHBOARD.read_text())
