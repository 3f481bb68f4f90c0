"""What can be checked of images/Dockerfile without a container engine.

No image can be built here, so these tests check the Dockerfile against the repository: the files
it copies exist and cover every package, the entry points it and the chart name are console
scripts in pyproject.toml, the base image is pinned, the build is multi-stage and the final
stage runs as a non-root user.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from neuron_localcluster.clitools import ensure_helm

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = set(PYPROJECT["project"]["scripts"])


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


INSTR = instructions(DOCKERFILE.read_text())


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr in INSTR:
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def _copies() -> list[list[str]]:
    """Source paths of every COPY that reads the build context (not --from another stage)."""
    found = []
    for word, rest in INSTR:
        if word != "COPY":
            continue
        parts = rest.split()
        if any(p.startswith("--from") for p in parts):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        found.append(paths[:-1])
    return found


def test_parser_joins_continuations() -> None:
    parsed = instructions("# c\nRUN a \\\n    b\nUSER 1\n")
    assert parsed == [("RUN", "a b"), ("USER", "1")]


def test_every_copied_file_exists() -> None:
    sources = [s for copy in _copies() for s in copy]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"


def test_every_package_folder_is_copied() -> None:
    copied = {s.rstrip("/") for copy in _copies() for s in copy}
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, f"not copied: {sorted(package_dirs - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied


def test_dockerignore_lets_every_copy_through() -> None:
    patterns = [
        line.strip()
        for line in (REPO / "images" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in (s.rstrip("/") for copy in _copies() for s in copy):
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(source, pattern.lstrip("!").rstrip("/")):
                included = negate
        assert included, f"{source} is excluded by the .dockerignore"


def test_multi_stage_with_named_stages() -> None:
    froms = [rest for word, rest in INSTR if word == "FROM"]
    assert len(froms) >= 2
    assert all(re.search(r"\bAS\s+\w+", f, re.IGNORECASE) for f in froms)


def test_base_image_is_pinned() -> None:
    args = dict(rest.split("=", 1) for word, rest in INSTR if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    match = re.fullmatch(
        r"python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base
    )
    assert match, f"base image {base!r} is not pinned to an exact release"
    required = PYPROJECT["project"]["requires-python"]
    minimum = tuple(int(x) for x in required.removeprefix(">=").split("."))
    assert (int(match.group(1)), int(match.group(2))) >= minimum
    assert all(f.startswith("${PYTHON_IMAGE}") for w, f in INSTR if w == "FROM")


def test_final_stage_runs_as_non_root_with_a_script_entrypoint() -> None:
    final = _stages()[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    entry = [rest for word, rest in final if word == "ENTRYPOINT"][-1]
    assert entry.startswith("[")
    program = entry.strip("[]").split(",")[0].strip().strip('"')
    assert program in SCRIPTS


def test_final_stage_copies_no_sources() -> None:
    final = _stages()[-1]
    assert not [rest for word, rest in final if word in ("COPY", "ADD")]


@pytest.mark.parametrize(
    "script",
    ["neuron-operator", "neuron-device-plugin", "neuron-runtime"],
    ids=["operator", "device-plugin", "runtime"],
)
def test_three_entrypoints_are_console_scripts(script: str) -> None:
    module, _, func = PYPROJECT["project"]["scripts"][script].partition(":")
    package = module.split(".")[0]
    folder = PYPROJECT["tool"]["setuptools"]["package-dir"][package]
    path = REPO / folder / (module.split(".", 1)[1].replace(".", "/") + ".py")
    assert path.is_file(), f"{script} points at {module}, but {path} does not exist"
    assert re.search(rf"^def {func}\(", path.read_text(), re.MULTILINE), f"{path} has no {func}()"


def test_every_chart_command_is_in_the_image() -> None:
    helm = ensure_helm()
    out = subprocess.run(
        [
            str(helm),
            "template",
            "ng",
            str(REPO / "charts" / "neuron-groups"),
            "--set",
            "tests.checkDevicePlugin=true",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = set()
    for obj in yaml.safe_load_all(out):
        if obj and obj["kind"] in ("Deployment", "DaemonSet", "Job"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                commands.add(c["command"][0])
    assert commands == {"neuron-operator", "neuron-device-plugin", "python"}
    assert commands - {"python"} <= SCRIPTS


@pytest.mark.slow
def test_wheel_builds_from_exactly_what_is_copied(tmp_path: Path) -> None:
    """The build stage's `pip wheel .` works on the copied files alone, with every entry point."""
    tree = tmp_path / "src"
    tree.mkdir()
    for source in (s.rstrip("/") for copy in _copies() for s in copy):
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, tree / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tree / source)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(tree),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    wheels = list((tmp_path / "wheels").glob("neuron_groups-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = whl.read(entry_points).decode()
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in scripts
        module = target.split(":")[0]
        assert module.replace(".", "/") + ".py" in names, f"{module} is missing from the wheel"
