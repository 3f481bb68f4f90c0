"""deploy/*.yaml must be exactly what deploy/render.py renders from the chart today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", REPO / "deploy" / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_folder_is_current_with_the_chart(render_module: ModuleType, helm: Path) -> None:
    expected: dict[str, str] = render_module.render(helm)
    stale = render_module.stale_files(expected)
    assert not stale, f"deploy/ is stale ({', '.join(stale)}): run `make deploy-render`"


def test_deploy_holds_crds_rbac_operator_and_device_plugin(
    render_module: ModuleType, helm: Path
) -> None:
    files: dict[str, str] = render_module.render(helm)
    kinds = {
        name: sorted(doc["kind"] for doc in yaml.safe_load_all(text) if doc)
        for name, text in files.items()
    }
    assert kinds["00-namespace.yaml"] == ["Namespace"]
    assert kinds["01-crds.yaml"] == ["CustomResourceDefinition"]
    assert set(kinds["02-rbac.yaml"]) == {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert "Deployment" in kinds["03-operator.yaml"]
    assert kinds["04-device-plugin.yaml"] == [
        "DaemonSet",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert kinds["05-workload-policy.yaml"] == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    everything = "".join(files.values())
    assert "managed-by: Helm" not in everything
    assert "helm.sh/hook" not in everything


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nkind: X\n", "no '# Source:' line"),
    ],
    ids=["no-source"],
)
def test_split_refuses_unattributed_documents(
    render_module: ModuleType, text: str, message: str
) -> None:
    with pytest.raises(render_module.RenderError, match=message):
        render_module.split_documents(text)


def test_layout_refuses_unplaced_templates(render_module: ModuleType) -> None:
    docs = [("templates/new-thing.yaml", "kind: X\n")]
    with pytest.raises(render_module.RenderError, match=r"new-thing\.yaml"):
        render_module.layout(docs)


def test_stale_files_names_changed_and_missing(render_module: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("same\n")
    (tmp_path / "b.yaml").write_text("old\n")
    expected = {"a.yaml": "same\n", "b.yaml": "new\n", "c.yaml": "x\n"}
    assert render_module.stale_files(expected, tmp_path) == ["b.yaml", "c.yaml"]
