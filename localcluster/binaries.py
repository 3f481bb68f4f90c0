"""Control-plane binaries: built once from the Go module in ``hack/cluster``, cached by version.

Why build: no container engine runs here and no cluster image can be pulled, but the Go module
proxy serves ``k8s.io/kubernetes``, ``go.etcd.io/etcd/server/v3`` and ``sigs.k8s.io/kwok``.  The
module ``hack/cluster`` pins one release of each (its ``require`` block is the single source of
the versions) and all five binaries come from ONE ``go build`` so the thousands of packages they
share compile once.  A first build takes minutes; afterwards every binary is read from
``${XDG_CACHE_HOME:-~/.cache}/neuron-groups/bin/<component>-<version>/<component>`` and a start
takes seconds.  ``KUBEBUILDER_ASSETS`` (controller-runtime's envtest convention) is honoured: any
usable binary found there is taken instead of building it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neuron_localcluster.cache import cache_root, locked

log = logging.getLogger(__name__)

ASSETS_ENV = "KUBEBUILDER_ASSETS"
MODULE_ENV = "NEURON_GROUPS_CLUSTER_MODULE"
GO_ENV = "NEURON_GROUPS_GO"

KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KWOK_MODULE = "sigs.k8s.io/kwok"

# component -> (module whose version names it, package built for it)
COMPONENTS: dict[str, tuple[str, str]] = {
    "kube-apiserver": (KUBERNETES_MODULE, "k8s.io/kubernetes/cmd/kube-apiserver"),
    "kube-controller-manager": (KUBERNETES_MODULE, "k8s.io/kubernetes/cmd/kube-controller-manager"),
    "kube-scheduler": (KUBERNETES_MODULE, "k8s.io/kubernetes/cmd/kube-scheduler"),
    "etcd": (ETCD_MODULE, "./cmd/etcd"),
    "kwok": (KWOK_MODULE, "sigs.k8s.io/kwok/cmd/kwok"),
}

_REQUIRE_LINE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\d+\.\d+\.\d+\S*)")


class BinaryError(RuntimeError):
    """A control-plane binary could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the five executables the local cluster runs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    etcd: Path
    kwok: Path

    def as_dict(self) -> dict[str, Path]:
        return {
            "kube-apiserver": self.kube_apiserver,
            "kube-controller-manager": self.kube_controller_manager,
            "kube-scheduler": self.kube_scheduler,
            "etcd": self.etcd,
            "kwok": self.kwok,
        }


def read_pins(go_mod: str) -> dict[str, str]:
    """Map each pinned module (kubernetes, etcd server, kwok) to its version in ``go_mod``.

    Only the first ``require`` occurrence counts; ``replace`` lines are ignored.
    """
    pins: dict[str, str] = {}
    in_replace = False
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        if line.startswith("replace"):
            in_replace = line.endswith("(")
            continue
        if in_replace:
            in_replace = line.strip() != ")"
            continue
        match = _REQUIRE_LINE.match(line)
        if match and match.group(1) in (KUBERNETES_MODULE, ETCD_MODULE, KWOK_MODULE):
            pins.setdefault(match.group(1), match.group(2))
    missing = {KUBERNETES_MODULE, ETCD_MODULE, KWOK_MODULE} - pins.keys()
    if missing:
        raise BinaryError(
            f"hack/cluster/go.mod does not require {', '.join(sorted(missing))}; it must pin "
            f"{KUBERNETES_MODULE}, {ETCD_MODULE} and {KWOK_MODULE} (restore it from git)."
        )
    return pins


def component_versions(pins: Mapping[str, str]) -> dict[str, str]:
    return {name: pins[module] for name, (module, _) in COMPONENTS.items()}


def version_ldflags(kubernetes_version: str) -> str:
    """``-X`` flags stamping the Kubernetes release into the binaries (``--version``, discovery)."""
    match = re.match(r"v(\d+)\.(\d+)", kubernetes_version)
    if not match:
        raise BinaryError(f"cannot read major.minor from Kubernetes version {kubernetes_version!r}")
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={kubernetes_version}",
            f"-X {pkg}.gitMajor={match.group(1)}",
            f"-X {pkg}.gitMinor={match.group(2)}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    )


def build_command(
    go: str, out_dir: Path, components: list[str], kubernetes_version: str
) -> list[str]:
    """The single ``go build`` invocation producing ``components`` into ``out_dir``."""
    packages = [COMPONENTS[name][1] for name in components]
    return [
        go,
        "build",
        "-trimpath",
        "-o",
        str(out_dir) + os.sep,
        f"-ldflags={version_ldflags(kubernetes_version)}",
        *packages,
    ]


def build_env(env: Mapping[str, str], toolchain: str = "local") -> dict[str, str]:
    """The environment for ``go build``: exactly ``toolchain``, resolve modules freely.

    ``local`` (the control plane) never fetches another toolchain; a module whose release needs a
    newer Go names one (``go1.27.3``), which the go command fetches once from the module proxy.
    """
    out = dict(env)
    out["GOTOOLCHAIN"] = toolchain
    flags = out.get("GOFLAGS", "").split()
    if not any(flag.startswith("-mod=") for flag in flags):
        flags.append("-mod=mod")
    # The module sits inside the project's git checkout; stamping VCS data would make the build
    # depend on git working there (ownership checks in CI clones), for nothing we use.
    if not any(flag.startswith("-buildvcs") for flag in flags):
        flags.append("-buildvcs=false")
    out["GOFLAGS"] = " ".join(flags)
    return out


def cached_path(root: Path, component: str, version: str) -> Path:
    return root / f"{component}-{version}" / component


def module_dir(env: Mapping[str, str]) -> Path:
    """Where the Go module lives: ``$NEURON_GROUPS_CLUSTER_MODULE`` or the repo's hack/cluster."""
    override = env.get(MODULE_ENV)
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "hack" / "cluster"
    if not (path / "go.mod").is_file():
        raise BinaryError(
            f"no go.mod in {path}; run from a checkout of neuron-groups or set {MODULE_ENV} to "
            "the folder holding hack/cluster/go.mod."
        )
    return path


def _usable(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def from_assets(env: Mapping[str, str]) -> dict[str, Path]:
    """Usable binaries in ``$KUBEBUILDER_ASSETS`` (any subset of the five components)."""
    assets = env.get(ASSETS_ENV)
    if not assets:
        return {}
    found = {name: Path(assets) / name for name in COMPONENTS if _usable(Path(assets) / name)}
    if found:
        log.info("using %s from %s=%s", ", ".join(sorted(found)), ASSETS_ENV, assets)
    else:
        log.warning(
            "%s=%s holds none of %s; building them", ASSETS_ENV, assets, ", ".join(COMPONENTS)
        )
    return found


def _find_go(env: Mapping[str, str]) -> str:
    chosen = env.get(GO_ENV)
    if chosen:
        found = shutil.which(chosen, path=env.get("PATH"))
        if not found:
            raise BinaryError(
                f"{GO_ENV}={chosen!r} is not an executable go binary; set it to one (e.g. "
                f"/usr/lib/go/bin/go), unset it to use `go` on PATH, or point {ASSETS_ENV} at a "
                f"folder holding {', '.join(COMPONENTS)}."
            )
        return found
    go = shutil.which("go", path=env.get("PATH"))
    if not go:
        raise BinaryError(
            "the `go` command is not on PATH; install Go 1.26 or newer (Debian: the golang "
            f"package), set {GO_ENV} to a go binary, or point {ASSETS_ENV} at a folder holding "
            f"{', '.join(COMPONENTS)}."
        )
    return go


def ensure_binaries(env: Mapping[str, str] | None = None) -> Binaries:
    """Return the five binaries, building the missing ones in one ``go build`` (minutes, once)."""
    environ = dict(os.environ) if env is None else dict(env)
    paths = from_assets(environ)
    root = cache_root(environ)
    moddir = module_dir(environ)
    pins = read_pins((moddir / "go.mod").read_text())
    versions = component_versions(pins)
    for name, version in versions.items():
        if name not in paths and os.access(cached_path(root, name, version), os.X_OK):
            paths[name] = cached_path(root, name, version)
    missing = [name for name in COMPONENTS if name not in paths]
    if missing:
        with locked(root / ".build.lock"):
            missing = [
                n for n in missing if not os.access(cached_path(root, n, versions[n]), os.X_OK)
            ]
            if missing:
                _build(
                    environ,
                    moddir=moddir,
                    root=root,
                    missing=missing,
                    versions=versions,
                    kubernetes_version=pins[KUBERNETES_MODULE],
                )
        for name in COMPONENTS:
            paths.setdefault(name, cached_path(root, name, versions[name]))
    return Binaries(
        kube_apiserver=paths["kube-apiserver"],
        kube_controller_manager=paths["kube-controller-manager"],
        kube_scheduler=paths["kube-scheduler"],
        etcd=paths["etcd"],
        kwok=paths["kwok"],
    )


def _build(
    env: dict[str, str],
    *,
    moddir: Path,
    root: Path,
    missing: list[str],
    versions: Mapping[str, str],
    kubernetes_version: str,
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        cmd = build_command(_find_go(env), Path(tmp), missing, kubernetes_version)
        run_go_build(env, cmd, moddir=moddir, what=", ".join(missing))
        for name in missing:
            target = cached_path(root, name, versions[name])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / name, target)
        log.info("cached %s in %s", ", ".join(missing), root)


def find_go(env: Mapping[str, str]) -> str:
    """The go command to build with (``$NEURON_GROUPS_GO`` or ``go`` on PATH), or a clear error."""
    return _find_go(env)


def run_go_build(
    env: Mapping[str, str],
    cmd: list[str],
    *,
    moddir: Path,
    what: str,
    toolchain: str = "local",
    remedy: str = "",
) -> None:
    """Run one ``go build`` in ``moddir``; on failure raise with the output's tail and a remedy."""
    log.info(
        "building %s with one `go build` in %s (first time: many minutes on 2 cores)", what, moddir
    )
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=moddir,
        env=build_env(env, toolchain),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BinaryError(
            f"`{' '.join(cmd)}` failed in {moddir} (exit {proc.returncode}):\n{tail}\n"
            + (
                remedy
                or f"Check that Go is 1.26+ (`go version`) and the module proxy is reachable, "
                f"or point {ASSETS_ENV} at prebuilt binaries."
            )
        )
    log.info("built %s in %.0fs", what, time.monotonic() - started)
