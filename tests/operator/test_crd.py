"""The CRD agrees with the Python API: instance types, core counts, bounds and defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuron_cores import INSTANCE_TYPES
from neuron_operator import api

CRD = (
    Path(__file__).resolve().parents[2]
    / "charts/neuron-groups/crds/neuronworkloads.neurongroups.dev.yaml"
)


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return document


def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec: dict[str, Any] = schema["properties"]["spec"]
    return spec


def test_names_and_scale_subresource(crd: dict[str, Any]) -> None:
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["names"]["kind"] == api.KIND
    assert crd["spec"]["names"]["plural"] == api.PLURAL
    assert crd["spec"]["names"]["shortNames"] == [api.SHORT_NAME]
    version = crd["spec"]["versions"][0]
    assert version["name"] == api.VERSION
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_instance_type_enum_matches_the_shared_table(crd: dict[str, Any]) -> None:
    assert set(spec_schema(crd)["properties"]["instanceType"]["enum"]) == set(INSTANCE_TYPES)


def test_every_cel_core_map_matches_the_shared_table(crd: dict[str, Any]) -> None:
    expected = {name: t.cores for name, t in INSTANCE_TYPES.items()}
    text = "\n".join(
        str(rule.get(k, "")) for rule in spec_schema(crd)["x-kubernetes-validations"] for k in rule
    )
    maps = re.findall(r"\{([^{}]*inf1\.xlarge[^{}]*)\}", text)
    assert len(maps) >= 4
    for body in maps:
        pairs = dict(re.findall(r"'([^']+)':\s*(\d+)", body))
        assert {k: int(v) for k, v in pairs.items()} == expected


BOUNDS = [
    ("models", "maxItems", api.MAX_MODELS),
    ("replicas", "maximum", api.MAX_REPLICAS),
    ("nodeCores", "maximum", api.MAX_NODE_CORES),
]


@pytest.mark.parametrize(("field", "key", "value"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_bounds_agree(crd: dict[str, Any], field: str, key: str, value: int) -> None:
    assert spec_schema(crd)["properties"][field][key] == value


def test_model_bounds_and_defaults(crd: dict[str, Any]) -> None:
    model = spec_schema(crd)["properties"]["models"]["items"]["properties"]
    assert model["copies"]["maximum"] == api.MAX_COPIES
    assert model["copies"]["default"] == 1
    assert spec_schema(crd)["properties"]["isolation"]["enum"] == list(api.ISOLATIONS)
    assert spec_schema(crd)["properties"]["isolation"]["default"] == api.ISOLATION_SHARED


def cel_string(literal: str) -> str:
    """The value of a single-quoted CEL string literal (only backslash escapes used here)."""
    return re.sub(r"\\(.)", r"\1", literal)


def test_model_path_rule_is_the_operators(crd: dict[str, Any]) -> None:
    path = spec_schema(crd)["properties"]["models"]["items"]["properties"]["path"]
    assert path["maxLength"] == api.MAX_MODEL_PATH
    rule = path["x-kubernetes-validations"][0]["rule"]
    literal = re.fullmatch(r"self\.matches\('(.*)'\)", rule)
    assert literal is not None
    assert cel_string(literal.group(1)) == api._MODEL_PATH.pattern


def test_pod_fields_are_closed_and_agree(crd: dict[str, Any]) -> None:
    props = spec_schema(crd)["properties"]
    volume = props["volumes"]["items"]
    assert set(volume["properties"]) == {"name", *api.VOLUME_TYPES}
    projected = volume["properties"]["projected"]["properties"]["sources"]["items"]
    assert set(projected["properties"]) == set(api.PROJECTED_SOURCES)
    assert set(props["env"]["items"]["properties"]) == set(api.ENV_KEYS)
    assert set(props["env"]["items"]["properties"]["valueFrom"]["properties"]) == set(
        api.ENV_SOURCES
    )
    assert props["env"]["items"]["properties"]["value"]["type"] == "string"
    assert set(props["volumeMounts"]["items"]["properties"]) == set(api.MOUNT_KEYS)
    mounts = props["volumeMounts"]["items"]["properties"]
    assert mounts["mountPropagation"]["enum"] == list(api.MOUNT_PROPAGATIONS)
    tolerations = props["tolerations"]["items"]["properties"]
    assert set(tolerations) == set(api.TOLERATION_KEYS)
    assert tolerations["operator"]["enum"] == list(api.TOLERATION_OPERATORS)
    assert tolerations["effect"]["enum"] == list(api.TOLERATION_EFFECTS)

    def open_objects(schema: Any, where: str) -> list[str]:
        """Where unknown fields are kept: only inside a volume or env source's own object."""
        found = []
        if isinstance(schema, dict):
            if schema.get("x-kubernetes-preserve-unknown-fields") and not where.endswith(
                tuple(f".{k}" for k in (*api.VOLUME_TYPES, *api.ENV_SOURCES))
            ):
                found.append(where)
            for key, value in (schema.get("properties") or {}).items():
                found += open_objects(value, f"{where}.{key}")
            if "items" in schema:
                found += open_objects(schema["items"], f"{where}[]")
        return found

    assert open_objects(spec_schema(crd), "spec") == []


@pytest.mark.parametrize(
    ("where", "bound"),
    [("spec", api.MAX_PLAN_TEXT), ("env", api.MAX_ENV_TEXT)],
    ids=["plan-text", "env-text"],
)
def test_size_bounds_agree(crd: dict[str, Any], where: str, bound: int) -> None:
    schema = spec_schema(crd) if where == "spec" else spec_schema(crd)["properties"]["env"]
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any(f"<= {bound}" in rule for rule in rules), rules


def test_container_fields_are_the_operators(crd: dict[str, Any]) -> None:
    container = spec_schema(crd)["properties"]["container"]
    props = container["properties"]
    assert set(props) == set(api.CONTAINER_KEYS)
    assert set(props["ports"]["items"]["properties"]) == set(api.PORT_KEYS)
    assert props["ports"]["items"]["properties"]["protocol"]["enum"] == list(api.PORT_PROTOCOLS)
    probes = [props[name] for name in api.PROBES]
    for probe in probes:
        described = {k: v for k, v in probe.items() if k != "description"}
        assert described == {k: v for k, v in probes[0].items() if k != "description"}
        assert set(probe["properties"]) == {*api.PROBE_HANDLERS, *api.PROBE_TIMINGS}
        for handler, keys in api.PROBE_HANDLER_KEYS.items():
            assert set(probe["properties"][handler]["properties"]) == set(keys)
    placeholders = re.findall(r"'\{(\w+)\}'", str(props["modelArgs"]["items"]))
    assert placeholders == list(api.MODEL_ARG_FIELDS)


def test_reserved_env_rule_lists_every_planned_variable(crd: dict[str, Any]) -> None:
    name = spec_schema(crd)["properties"]["env"]["items"]["properties"]["name"]
    rule = name["x-kubernetes-validations"][0]["rule"]
    assert re.findall(r"'([A-Z_]+)'", rule) == list(api.RESERVED_ENV)


ARG_BOUNDS = [
    ("command", api.MAX_ARGS, api.MAX_ARG_LENGTH),
    ("args", api.MAX_ARGS, api.MAX_ARG_LENGTH),
    ("modelArgs", api.MAX_MODEL_ARGS, api.MAX_MODEL_ARG_LENGTH),
]


@pytest.mark.parametrize(("field", "items", "length"), ARG_BOUNDS, ids=[b[0] for b in ARG_BOUNDS])
def test_container_argument_bounds_agree(
    crd: dict[str, Any], field: str, items: int, length: int
) -> None:
    schema = spec_schema(crd)["properties"]["container"]["properties"][field]
    assert (schema["maxItems"], schema["items"]["maxLength"]) == (items, length)


def test_allocation_modes_agree(crd: dict[str, Any]) -> None:
    allocation = spec_schema(crd)["properties"]["allocation"]
    assert allocation["enum"] == list(api.ALLOCATIONS)
    assert allocation["default"] == api.ALLOCATION_AUTO
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    wide = [c for c in columns if c["jsonPath"] == ".spec.allocation"]
    assert wide and wide[0]["priority"] == 1  # `kubectl get nwl -o wide`
