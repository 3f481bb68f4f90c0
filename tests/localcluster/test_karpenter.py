"""Karpenter's kwok provider as the local autoscaler: pin, build cache, manifests, patch."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from neuron_cores import INSTANCE_TYPES, UnknownInstanceTypeError
from neuron_localcluster import binaries, cli, karpenter, layout
from neuron_localcluster.binaries import BinaryError

REPO = Path(__file__).resolve().parents[2]


# ---- the pin -------------------------------------------------------------------------------


def test_repo_pin_is_the_release_and_toolchain_the_docs_name() -> None:
    pin = karpenter.read_pin((REPO / "hack/karpenter/go.mod").read_text())
    assert pin == karpenter.Pin("v1.15.0", "go1.27.3")
    assert "v1.15.0" in (REPO / "docs/autoscaling.md").read_text()


@pytest.mark.parametrize(
    ("go_mod", "want"),
    [
        (
            "module m\ngo 1.26.9\ntoolchain go1.27.3\nrequire sigs.k8s.io/karpenter v1.15.0\n",
            karpenter.Pin("v1.15.0", "go1.27.3"),
        ),
        (
            "module m\ntoolchain go1.27.3 // pinned\nrequire (\n\tsigs.k8s.io/karpenter v1.14.3\n"
            "\tk8s.io/api v0.36.1 // indirect\n)\n",
            karpenter.Pin("v1.14.3", "go1.27.3"),
        ),
    ],
    ids=["single-require", "require-block"],
)
def test_read_pin(go_mod: str, want: karpenter.Pin) -> None:
    assert karpenter.read_pin(go_mod) == want


@pytest.mark.parametrize(
    ("go_mod", "named"),
    [
        ("module m\nrequire sigs.k8s.io/karpenter v1.15.0\n", "toolchain"),
        ("module m\ntoolchain go1.27.3\nrequire k8s.io/api v0.36.1\n", "require"),
        ("module m\n", "require"),
    ],
    ids=["no-toolchain", "no-karpenter", "empty"],
)
def test_read_pin_refuses_incomplete_go_mod(go_mod: str, named: str) -> None:
    with pytest.raises(BinaryError, match=named):
        karpenter.read_pin(go_mod)


def test_build_env_names_the_toolchain() -> None:
    env = binaries.build_env({"PATH": "/bin"}, "go1.27.3")
    assert env["GOTOOLCHAIN"] == "go1.27.3"
    assert "-mod=mod" in env["GOFLAGS"].split()
    assert binaries.build_env({"PATH": "/bin"})["GOTOOLCHAIN"] == "local"


def test_build_command_builds_the_kwok_provider(tmp_path: Path) -> None:
    cmd = karpenter.build_command("/usr/bin/go", tmp_path / "karpenter-kwok")
    assert cmd[:2] == ["/usr/bin/go", "build"]
    assert cmd[-1] == "sigs.k8s.io/karpenter/kwok"
    assert str(tmp_path / "karpenter-kwok") in cmd


def _fake_cache(root: Path, version: str, *, crds: bool = True) -> Path:
    folder = karpenter.cache_folder(root / "neuron-groups" / "bin", version)
    (folder / "crds").mkdir(parents=True)
    binary = folder / karpenter.COMPONENT
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    if crds:
        (folder / "crds" / "karpenter.sh_nodepools.yaml").write_text(
            "kind: CustomResourceDefinition\n"
        )
    return folder


def test_ensure_karpenter_reuses_the_cache_without_go(tmp_path: Path) -> None:
    folder = _fake_cache(tmp_path, "v1.15.0")
    env = {
        "XDG_CACHE_HOME": str(tmp_path),
        "PATH": "",
        binaries.GO_ENV: str(tmp_path / "no-go-here"),
    }
    assets = karpenter.ensure_karpenter(env)
    assert assets.binary == folder / karpenter.COMPONENT
    assert [p.name for p in assets.crds] == ["karpenter.sh_nodepools.yaml"]
    assert assets.version == "v1.15.0"


def test_ensure_karpenter_builds_when_crds_are_missing(tmp_path: Path) -> None:
    """A cache entry without its CRDs is incomplete: it is rebuilt, here failing on no go."""
    _fake_cache(tmp_path, "v1.15.0", crds=False)
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "", binaries.GO_ENV: "no-such-go"}
    with pytest.raises(BinaryError, match="no-such-go"):
        karpenter.ensure_karpenter(env)


def test_module_dir_override_must_hold_go_mod(tmp_path: Path) -> None:
    with pytest.raises(BinaryError, match=karpenter.MODULE_ENV):
        karpenter.module_dir({karpenter.MODULE_ENV: str(tmp_path)})


# ---- settings ------------------------------------------------------------------------------


def test_every_neuron_instance_type_has_a_shape() -> None:
    assert set(karpenter.SHAPES) == set(INSTANCE_TYPES)
    assert karpenter.Settings().instance_types == tuple(INSTANCE_TYPES)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"consolidate_after": "5 sec"}, karpenter.KarpenterError, "'5 sec'.*e.g. '5s'"),
        ({"consolidate_after": ""}, karpenter.KarpenterError, "consolidate_after"),
        ({"registration_delay": "1d"}, karpenter.KarpenterError, "registration_delay='1d'"),
        ({"core_limit": 0}, karpenter.KarpenterError, "core_limit=0"),
        ({"instance_types": ()}, karpenter.KarpenterError, "no instance types"),
        ({"instance_types": ("p4d.24xlarge",)}, UnknownInstanceTypeError, "p4d.24xlarge"),
    ],
    ids=["duration-words", "duration-empty", "delay-days", "limit-zero", "no-types", "not-neuron"],
)
def test_settings_refuse_bad_values(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        karpenter.Settings(**kwargs)


@pytest.mark.parametrize(
    ("text", "want"),
    [("karpenter", "karpenter"), (" Karpenter ", "karpenter"), ("none", "none")],
    ids=["plain", "case-space", "none"],
)
def test_parse_autoscaler(text: str, want: str) -> None:
    assert karpenter.parse_autoscaler(text) == want


def test_parse_autoscaler_refuses_unknown() -> None:
    with pytest.raises(karpenter.KarpenterError, match=r"'cluster-autoscaler'.*none, karpenter"):
        karpenter.parse_autoscaler("cluster-autoscaler")


# ---- the instance-types file, NodeClass and NodePool ---------------------------------------


@pytest.mark.parametrize(
    ("name", "cpu", "memory", "cores", "devices"),
    [
        ("inf1.6xlarge", "24", "48Gi", "16", "4"),
        ("inf1.24xlarge", "96", "192Gi", "64", "16"),
        ("inf2.xlarge", "4", "16Gi", "2", "1"),
        ("inf2.48xlarge", "192", "768Gi", "24", "12"),
        ("trn1.2xlarge", "8", "32Gi", "2", "1"),
        ("trn1.32xlarge", "128", "512Gi", "32", "16"),
    ],
    ids=str,
)
def test_instance_types_file_carries_real_counts(
    name: str, cpu: str, memory: str, cores: str, devices: str
) -> None:
    document = json.loads(json.dumps(karpenter.instance_types_file(karpenter.Settings())))
    entry = next(e for e in document if e["name"] == name)
    assert entry["resources"] == {
        "cpu": cpu,
        "memory": memory,
        "pods": "110",
        "aws.amazon.com/neuroncore": cores,
        "aws.amazon.com/neuron": devices,
    }
    assert entry["architecture"] == "amd64"
    assert entry["operatingSystems"] == ["linux"]
    (offering,) = entry["offerings"]
    assert offering["Available"] is True and offering["Price"] > 0
    keys = {r["key"]: r["values"] for r in offering["Requirements"]}
    assert keys == {
        "karpenter.sh/capacity-type": ["on-demand"],
        "topology.kubernetes.io/zone": ["us-east-1a"],
    }


def test_instance_types_file_lists_only_the_chosen_types() -> None:
    settings = karpenter.Settings(instance_types=("inf1.6xlarge", "trn1.2xlarge"))
    names = [e["name"] for e in karpenter.instance_types_file(settings)]
    assert names == ["inf1.6xlarge", "trn1.2xlarge"]


def test_nodepool_taints_limits_and_consolidates() -> None:
    settings = karpenter.Settings(
        instance_types=("inf1.6xlarge",), consolidate_after="5s", core_limit=128
    )
    pool = karpenter.nodepool_manifest(settings)
    template = pool["spec"]["template"]
    assert template["spec"]["taints"] == [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]
    requirements = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
    assert requirements["node.kubernetes.io/instance-type"] == ["inf1.6xlarge"]
    assert template["metadata"]["labels"] == {"neuron-groups.io/simulation": "kwok"}
    assert pool["spec"]["disruption"]["consolidateAfter"] == "5s"
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
    assert pool["spec"]["limits"] == {"aws.amazon.com/neuroncore": "128"}
    nodeclass = karpenter.nodeclass_manifest(settings)
    ref = template["spec"]["nodeClassRef"]
    assert (ref["kind"], ref["name"]) == (nodeclass["kind"], nodeclass["metadata"]["name"])
    assert ref["group"] == nodeclass["apiVersion"].split("/")[0]


def test_process_env_binds_picked_ports_and_runs_alone(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "HOME": "/root", "KUBECONFIG": "/elsewhere", "AWS_PROFILE": "x"}
    env = karpenter.process_env(
        base,
        kubeconfig=tmp_path / "k",
        instance_types_path=tmp_path / "types.json",
        metrics_port=40001,
        health_port=40002,
    )
    assert env["KUBECONFIG"] == str(tmp_path / "k")
    assert env["INSTANCE_TYPES_FILE_PATH"] == str(tmp_path / "types.json")
    assert (env["METRICS_PORT"], env["HEALTH_PROBE_PORT"]) == ("40001", "40002")
    assert env["DISABLE_LEADER_ELECTION"] == "true"
    assert "AWS_PROFILE" not in env


def test_ports_include_karpenters_and_are_distinct() -> None:
    ports = layout.pick_ports()
    values = list(layout.ports_dict(ports).values())
    assert ports.karpenter_metrics and ports.karpenter_health
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    ("cores", "itype", "want"),
    [(64, "inf1.6xlarge", 4), (1000, "inf1.6xlarge", 63), (65, "inf1.24xlarge", 2)],
    ids=["exact", "1000-cores", "one-over"],
)
def test_nodes_lower_bound(cores: int, itype: str, want: int) -> None:
    assert karpenter.nodes_lower_bound(cores, itype) == want


# ---- the capacity publisher ----------------------------------------------------------------


def _node(labels: dict[str, str], capacity: dict[str, str], allocatable: dict[str, str]) -> Any:
    return {
        "metadata": {"name": "n", "labels": labels},
        "status": {"capacity": capacity, "allocatable": allocatable},
    }


KARPENTER_LABELS = {
    "karpenter.sh/nodepool": "neuron",
    "node.kubernetes.io/instance-type": "inf1.6xlarge",
}
FULL_CAPACITY = {
    "cpu": "24",
    "memory": "48Gi",
    "pods": "110",
    "aws.amazon.com/neuroncore": "16",
    "aws.amazon.com/neuron": "4",
}


@pytest.mark.parametrize(
    ("node", "want"),
    [
        (
            # what the kwok provider writes for a node made for four one-core pods
            _node(
                KARPENTER_LABELS,
                {"aws.amazon.com/neuroncore": "4", "pods": "4"},
                {"aws.amazon.com/neuroncore": "16", "aws.amazon.com/neuron": "4", "cpu": "23900m"},
            ),
            {
                "status": {
                    "capacity": FULL_CAPACITY,
                    "allocatable": {
                        "aws.amazon.com/neuroncore": "16",
                        "aws.amazon.com/neuron": "4",
                        "cpu": "23900m",
                    },
                }
            },
        ),
        (
            _node(KARPENTER_LABELS, dict(FULL_CAPACITY), {"aws.amazon.com/neuroncore": "2"}),
            {
                "status": {
                    "capacity": FULL_CAPACITY,
                    "allocatable": {
                        "aws.amazon.com/neuroncore": "16",
                        "aws.amazon.com/neuron": "4",
                    },
                }
            },
        ),
        (
            _node(
                KARPENTER_LABELS,
                dict(FULL_CAPACITY),
                {"aws.amazon.com/neuroncore": "16", "aws.amazon.com/neuron": "4"},
            ),
            None,
        ),
        (
            _node(
                {"node.kubernetes.io/instance-type": "inf1.6xlarge"},
                {"aws.amazon.com/neuroncore": "4"},
                {},
            ),
            None,
        ),
        (
            _node(
                {"karpenter.sh/nodepool": "neuron", "node.kubernetes.io/instance-type": "m5.large"},
                {"cpu": "2"},
                {},
            ),
            None,
        ),
    ],
    ids=["partial-capacity", "short-allocatable", "already-right", "not-karpenter", "not-neuron"],
)
def test_capacity_patch(node: Any, want: dict[str, Any] | None) -> None:
    assert karpenter.capacity_patch(node) == want


# ---- the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwok", "emulated", "autoscaler", "emulated_default", "want"),
    [
        (None, None, "none", "", ("2xinf1.6xlarge", "inf1.6xlarge")),
        (None, None, "karpenter", "", ("", "")),
        (None, None, "karpenter", "inf1.6xlarge", ("", "inf1.6xlarge")),
        ("inf2.xlarge", "", "karpenter", "inf1.6xlarge", ("inf2.xlarge", "")),
    ],
    ids=["static", "autoscaled-up", "autoscaled-demo", "explicit-wins"],
)
def test_node_lists(
    kwok: str | None,
    emulated: str | None,
    autoscaler: str,
    emulated_default: str,
    want: tuple[str, str],
) -> None:
    got = cli.node_lists(kwok, emulated, autoscaler, emulated_with_autoscaler=emulated_default)
    assert got == want


def test_cli_parses_autoscaler_and_consolidation() -> None:
    args = cli.build_parser().parse_args(
        ["up", "--autoscaler", "Karpenter", "--consolidate-after", "5s"]
    )
    assert args.autoscaler == "karpenter"
    settings = cli.autoscaler_settings(args.autoscaler, args.consolidate_after)
    assert settings is not None and settings.consolidate_after == "5s"
    assert cli.autoscaler_settings("none", "5s") is None


def test_cli_refuses_unknown_autoscaler(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["up", "--autoscaler", "cas"])
    assert exc.value.code == 2
    assert "'cas' is not known; use one of none, karpenter" in capsys.readouterr().err


def test_cli_refuses_bad_consolidation_before_starting(tmp_path: Path) -> None:
    with pytest.raises(karpenter.KarpenterError, match="'soon'"):
        cli.autoscaler_settings("karpenter", "soon")
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)


FAKE_GO = """#!/bin/sh
# A stand-in go command: records its GOTOOLCHAIN, "builds" by writing an executable, and
# answers `go list -m -json` with a module folder holding CRDs.
echo "$GOTOOLCHAIN $*" >> "{log}"
if [ "$1" = build ]; then
  [ -n "{fail}" ] && {{ echo "go: downloading go1.27.3: proxy unreachable" >&2; exit 1; }}
  while [ "$1" != -o ]; do shift; done
  printf '#!/bin/sh\\n' > "$2" && chmod +x "$2"
  exit 0
fi
if [ "$1" = list ]; then
  echo '{{"Path": "sigs.k8s.io/karpenter", "Version": "{version}", "Dir": "{source}"}}'
  exit 0
fi
exit 2
"""


def _fake_go(tmp_path: Path, *, fail: bool = False, version: str = "v1.15.0") -> dict[str, str]:
    source = tmp_path / "module"
    for sub, name in (("pkg/apis/crds", "karpenter.sh_nodepools.yaml"),
                      ("kwok/apis/crds", "karpenter.kwok.sh_kwoknodeclasses.yaml")):  # fmt: skip
        (source / sub).mkdir(parents=True)
        (source / sub / name).write_text("kind: CustomResourceDefinition\n")
    go = tmp_path / "go"
    go.write_text(
        FAKE_GO.format(
            log=tmp_path / "go.log", fail="yes" if fail else "", version=version, source=source
        )
    )
    go.chmod(0o755)
    return {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        binaries.GO_ENV: str(go),
    }


def test_ensure_karpenter_builds_with_the_pinned_toolchain_and_copies_crds(
    tmp_path: Path,
) -> None:
    assets = karpenter.ensure_karpenter(_fake_go(tmp_path))
    folder = tmp_path / "cache/neuron-groups/bin/karpenter-kwok-v1.15.0"
    assert assets.binary == folder / "karpenter-kwok"
    assert [p.name for p in assets.crds] == [
        "karpenter.kwok.sh_kwoknodeclasses.yaml",
        "karpenter.sh_nodepools.yaml",
    ]
    calls = (tmp_path / "go.log").read_text().splitlines()
    assert calls[0].startswith("go1.27.3 build -trimpath")
    assert calls[0].endswith("sigs.k8s.io/karpenter/kwok")
    assert calls[1] == "go1.27.3 list -m -json sigs.k8s.io/karpenter"
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".build-")] == []
    # a second call finds the cache: no more go calls
    (tmp_path / "again").mkdir()
    env = {**_fake_go(tmp_path / "again"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert karpenter.ensure_karpenter(env) == assets
    assert not (tmp_path / "again" / "go.log").exists()


@pytest.mark.parametrize(
    ("fail", "version", "match"),
    [
        (True, "v1.15.0", "proxy unreachable.*fetches the go1.27.3 toolchain"),
        (False, "v1.14.3", "holds sigs.k8s.io/karpenter 'v1.14.3', not v1.15.0"),
    ],
    ids=["build-fails", "wrong-module-version"],
)
def test_ensure_karpenter_reports_build_failures(
    tmp_path: Path, fail: bool, version: str, match: str
) -> None:
    env = _fake_go(tmp_path, fail=fail, version=version)
    with pytest.raises(BinaryError, match=re.compile(match, re.S)):
        karpenter.ensure_karpenter(env)
    assert not (tmp_path / "cache/neuron-groups/bin/karpenter-kwok-v1.15.0").exists()
