"""Pins, build command and cache lookup of the control-plane binaries (no Go build here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuron_localcluster import binaries, cache

GO_MOD = """module example
go 1.26.0
require (
\tgo.etcd.io/etcd/server/v3 v3.6.8
\tk8s.io/kubernetes v1.36.1
\tsigs.k8s.io/kwok v0.8.0
)
require k8s.io/api v0.0.0 // indirect
replace (
\tk8s.io/kubernetes => k8s.io/kubernetes v9.9.9
)
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GO_MOD,
            {
                "k8s.io/kubernetes": "v1.36.1",
                "go.etcd.io/etcd/server/v3": "v3.6.8",
                "sigs.k8s.io/kwok": "v0.8.0",
            },
        ),
        (
            "require k8s.io/kubernetes v1.35.4\nrequire sigs.k8s.io/kwok v0.7.0\n"
            "require go.etcd.io/etcd/server/v3 v3.6.5 // indirect\n",
            {
                "k8s.io/kubernetes": "v1.35.4",
                "go.etcd.io/etcd/server/v3": "v3.6.5",
                "sigs.k8s.io/kwok": "v0.7.0",
            },
        ),
    ],
    ids=["block-require-ignores-replace", "single-line-requires"],
)
def test_read_pins(text: str, expected: dict[str, str]) -> None:
    assert binaries.read_pins(text) == expected


def test_read_pins_names_the_missing_module() -> None:
    with pytest.raises(binaries.BinaryError, match=r"sigs\.k8s\.io/kwok"):
        binaries.read_pins(
            "require k8s.io/kubernetes v1.36.1\nrequire go.etcd.io/etcd/server/v3 v3.6.8\n"
        )


def test_repo_go_mod_pins_a_kubernetes_release_of_at_least_1_34() -> None:
    pins = binaries.read_pins((binaries.module_dir({}) / "go.mod").read_text())
    major, minor = pins["k8s.io/kubernetes"].lstrip("v").split(".")[:2]
    assert (int(major), int(minor)) >= (1, 34)
    staging = (binaries.module_dir({}) / "go.mod").read_text()
    assert f"k8s.io/api => k8s.io/api v0.{minor}." in staging


def test_build_command_is_one_invocation_for_all_components(tmp_path: Path) -> None:
    cmd = binaries.build_command("go", tmp_path, list(binaries.COMPONENTS), "v1.36.1")
    assert cmd[:3] == ["go", "build", "-trimpath"]
    assert cmd[cmd.index("-o") + 1] == str(tmp_path) + os.sep
    ldflags = next(a for a in cmd if a.startswith("-ldflags="))
    assert "-s -w" in ldflags
    assert "k8s.io/component-base/version.gitVersion=v1.36.1" in ldflags
    assert "gitMinor=36" in ldflags
    assert [a for a in cmd if "/cmd/" in a or a == "./cmd/etcd"] == [
        pkg for _, pkg in binaries.COMPONENTS.values()
    ]


@pytest.mark.parametrize(
    ("env", "goflags"),
    [
        ({}, "-mod=mod -buildvcs=false"),
        ({"GOFLAGS": "-v"}, "-v -mod=mod -buildvcs=false"),
        ({"GOFLAGS": "-mod=vendor -buildvcs=true"}, "-mod=vendor -buildvcs=true"),
    ],
    ids=["empty", "keeps-other-flags", "respects-explicit-mod"],
)
def test_build_env(env: dict[str, str], goflags: str) -> None:
    out = binaries.build_env(env)
    assert out["GOTOOLCHAIN"] == "local"
    assert out["GOFLAGS"] == goflags


def _fake_binary(path: Path, exit_code: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho fake {path.name}\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


def test_cached_binaries_are_used_without_go(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "", "NEURON_GROUPS_GO": "/nonexistent/go"}
    pins = binaries.read_pins((binaries.module_dir({}) / "go.mod").read_text())
    versions = binaries.component_versions(pins)
    root = cache.cache_root(env)
    for name, version in versions.items():
        _fake_binary(binaries.cached_path(root, name, version))
    found = binaries.ensure_binaries(env)
    assert (
        found.kube_apiserver
        == root / f"kube-apiserver-{versions['kube-apiserver']}" / "kube-apiserver"
    )
    assert found.etcd.parent.name == f"etcd-{pins['go.etcd.io/etcd/server/v3']}"
    assert found.kwok.parent.name == f"kwok-{pins['sigs.k8s.io/kwok']}"


def test_kubebuilder_assets_take_precedence_and_broken_ones_are_skipped(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _fake_binary(assets / "kube-apiserver")
    _fake_binary(assets / "etcd", exit_code=3)  # not usable: --version fails
    found = binaries.from_assets({"KUBEBUILDER_ASSETS": str(assets)})
    assert found == {"kube-apiserver": assets / "kube-apiserver"}


def test_missing_go_is_a_clear_error(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": str(tmp_path / "empty")}
    with pytest.raises(binaries.BinaryError, match=r"install Go 1\.26") as err:
        binaries.ensure_binaries(env)
    assert "KUBEBUILDER_ASSETS" in str(err.value)


@pytest.mark.parametrize(
    "go", ["/nonexistent/go", "not-a-go-anywhere"], ids=["absolute", "bare-name"]
)
def test_a_go_override_that_is_not_executable_is_a_clear_error(tmp_path: Path, go: str) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": str(tmp_path / "empty"), "NEURON_GROUPS_GO": go}
    with pytest.raises(binaries.BinaryError, match="is not an executable go binary") as err:
        binaries.ensure_binaries(env)
    assert f"NEURON_GROUPS_GO={go!r}" in str(err.value)
