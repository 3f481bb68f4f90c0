"""``neuron-operator plan``: the samples print as pods, bad files exit 2 with the reason."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

from neuron_operator.cli import build_parser, load_workloads, main, plan_command, print_plans
from neuron_operator.runner import RUN_FLAGS, check_run_args

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "deploy" / "samples"


def run_plan(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(["plan", *argv])
    return plan_command(args, out), out.getvalue()


def test_json_is_a_list_of_pods() -> None:
    code, text = run_plan(str(SAMPLES / "02-resnet50-process.yaml"), "-o", "json")
    document = json.loads(text)
    assert code == 0
    assert (document["apiVersion"], document["kind"]) == ("v1", "List")
    assert len(document["items"]) == 16
    assert {i["kind"] for i in document["items"]} == {"Pod"}


def test_text_names_each_pod() -> None:
    code, text = run_plan(str(SAMPLES / "04-four-models-shared.yaml"))
    assert code == 0
    assert "NEURONCORE_GROUP_SIZES=2,4,6,4" in text
    assert "models=model-a,model-b,model-c,model-d" in text


def test_yaml_output() -> None:
    code, text = run_plan(str(SAMPLES / "05-shared-group.yaml"), "-o", "yaml")
    assert code == 0
    assert "kind: List" in text
    assert "value: model-a=/models/a,model-b=/models/b" in text


def test_invalid_sample_exits_2_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(SAMPLES / "06-invalid-too-large.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'big-model' needs 6 NeuronCores but a node of type inf1.xlarge has 4" in err


def test_a_pod_the_operator_would_refuse_as_too_large_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    huge = tmp_path / "huge.yaml"
    model = {"name": "m", "path": "/models/" + "p" * 250, "cores": 1, "copies": 600}
    document = {
        "apiVersion": "neurongroups.dev/v1alpha1",
        "kind": "NeuronWorkload",
        "metadata": {"name": "huge"},
        "spec": {"image": "i", "nodeCores": 16, "cores": 1, "models": [model]},
    }
    huge.write_text(json.dumps(document))
    assert main(["plan", str(huge)]) == 2
    assert "above the 128 KiB the kernel allows one environment string" in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_empty_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n")
    assert main(["plan", str(empty)]) == 2
    assert "holds no YAML document" in capsys.readouterr().err


def test_help_documents_every_flag_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    assert "--output" in text
    assert "NEURON_OPERATOR_PLAN_OUTPUT" in text


def test_run_help_documents_every_flag_with_its_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for run_flag in RUN_FLAGS:
        assert f"[env {run_flag.env}, default" in text
    for env in ["KUBECONFIG", "NEURON_OPERATOR_LEASE_NAMESPACE", "NEURON_OPERATOR_IDENTITY"]:
        assert env in text
    for flag in ("--namespace", "--lease-name", "--metrics-port", "--log-format", "--standalone"):
        assert flag in text


RUN_FLAG_CASES = [
    (
        "defaults",
        [],
        {"leader_election": True, "lease_name": "neuron-operator", "metrics_port": 8080},
    ),
    ("standalone", ["--standalone"], {"leader_election": False}),
    ("peering-alias", ["--peering", "x"], {"lease_name": "x"}),
    ("explicit-false", ["--leader-election", "false"], {"leader_election": False}),
    ("bare-leader-election", ["--leader-election"], {"leader_election": True}),
    ("leader-election-equals", ["--leader-election=false"], {"leader_election": False}),
    ("backoff-cap", ["--backoff-max-seconds", "30"], {"backoff_max_seconds": 30.0}),
    ("namespaces", ["--namespace", "a", "--namespace", "b"], {"namespaces": ["a", "b"]}),
]


@pytest.mark.parametrize(
    ("argv", "expected"), [c[1:] for c in RUN_FLAG_CASES], ids=[c[0] for c in RUN_FLAG_CASES]
)
def test_run_flags(argv: list[str], expected: dict[str, object]) -> None:
    args = build_parser().parse_args(["run", *argv])
    assert {k: getattr(args, k) for k in expected} == expected


def test_run_refuses_a_bad_boolean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--leader-election", "maybe"])
    assert "'maybe' is not a boolean" in capsys.readouterr().err


BAD_RUN_VALUES = [
    (
        "port-text-env",
        {"NEURON_OPERATOR_METRICS_PORT": "x"},
        [],
        "NEURON_OPERATOR_METRICS_PORT='x' is not valid for --metrics-port: 'x' is not a",
    ),
    (
        "port-range",
        {},
        ["--metrics-port", "70000"],
        "'70000' is out of range; give a number from 0",
    ),
    (
        "lease-zero-env",
        {"NEURON_OPERATOR_LEASE_SECONDS": "0"},
        [],
        "NEURON_OPERATOR_LEASE_SECONDS='0' is not valid for --lease-seconds: '0' is out",
    ),
    ("resync-text", {}, ["--resync-seconds", "soon"], "--resync-seconds: 'soon' is not a"),
    (
        "boolean-env",
        {"NEURON_OPERATOR_LEADER_ELECTION": "maybe"},
        [],
        "NEURON_OPERATOR_LEADER_ELECTION='maybe' is not valid for --leader-election: 'maybe' "
        "is not a boolean",
    ),
    (
        "log-format-env",
        {"NEURON_OPERATOR_LOG_FORMAT": "xml"},
        [],
        "NEURON_OPERATOR_LOG_FORMAT='xml' is not valid for --log-format: 'xml' is not a choice",
    ),
    (
        "log-level-env",
        {"NEURON_OPERATOR_LOG_LEVEL": "loud"},
        [],
        "NEURON_OPERATOR_LOG_LEVEL='loud' is not valid for --log-level: 'loud' is not a choice",
    ),
]


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [c[1:] for c in BAD_RUN_VALUES],
    ids=[c[0] for c in BAD_RUN_VALUES],
)
def test_run_refuses_bad_numbers_from_flags_and_env(
    environ: dict[str, str],
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["run", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


RUN_ARG_PROBLEMS: list[tuple[str, dict[str, str], list[str], str]] = [
    (
        "renew-not-shorter",
        {},
        ["--lease-seconds", "5", "--renew-seconds", "5"],
        "--renew-seconds 5 must be shorter than --lease-seconds 5",
    ),
]


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [c[1:] for c in RUN_ARG_PROBLEMS],
    ids=[c[0] for c in RUN_ARG_PROBLEMS],
)
def test_run_refuses_what_argparse_cannot_see(
    environ: dict[str, str],
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert any(message in p for p in check_run_args(build_parser().parse_args(["run", *argv])))
    assert main(["run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_run_defaults_pass_the_checks() -> None:
    assert check_run_args(build_parser().parse_args(["run"])) == []


def test_run_with_an_unreadable_kubeconfig_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing-kubeconfig"
    assert main(["run", "--standalone", "--metrics-port", "0", "--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load a Kubernetes client configuration from {missing}" in err


def test_plan_refuses_an_unknown_output_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURON_OPERATOR_PLAN_OUTPUT", "xml")
    with pytest.raises(SystemExit) as done:
        main(["plan", str(SAMPLES / "05-shared-group.yaml")])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert (
        "NEURON_OPERATOR_PLAN_OUTPUT='xml' is not valid for --output: 'xml' is not a choice; "
        "choose one of: text, yaml, json" in captured.err
    )
    assert captured.out == ""


def run_options() -> dict[str, argparse.Action]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices["run"]._option_string_actions)


def docs_pages() -> dict[Path, str]:
    return {page: page.read_text(encoding="utf-8") for page in (REPO / "docs").glob("*.md")}


def flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))


def documented_run_flags() -> set[str]:
    """Every ``--flag`` the docs give ``neuron-operator run``: its flags table in operator.md,
    and any line of any page that runs it."""
    flags: set[str] = set()
    for page, text in docs_pages().items():
        if page.name == "operator.md":
            flags |= flags_in(text.split("## `neuron-operator run` flags", 1)[1].split("\n## ")[0])
        for line in text.splitlines():
            if "neuron-operator run" in line:
                flags |= flags_in(line)
    return flags


def test_docs_and_run_flags_agree() -> None:
    documented = documented_run_flags()
    known = {f for f in run_options() if f.startswith("--")}
    assert documented, "the docs name no neuron-operator run flag"
    assert sorted(documented - known) == []  # documented, but run does not take it
    anywhere = set().union(*(flags_in(text) for text in docs_pages().values()))
    assert sorted(known - anywhere) == []  # run takes it, but no docs page names it


@pytest.mark.parametrize(
    "form",
    ["--leader-election", "--leader-election=false", "--standalone", "--all-namespaces"],
    ids=["bare-leader-election", "leader-election-value", "standalone", "all-namespaces"],
)
def test_documented_switches_parse_alone(form: str) -> None:
    assert form.split("=", maxsplit=1)[0] in documented_run_flags()
    build_parser().parse_args(["run", form])


@pytest.mark.parametrize(
    ("in_force", "claims"),
    [(None, False), ("DevicePlugin", False), ("DRA", True)],
    ids=["offline-auto-is-device-plugin", "in-force-device-plugin", "in-force-dra"],
)
def test_a_live_workloads_plan_shows_the_mode_in_force(in_force: str | None, claims: bool) -> None:
    """``kubectl neuron plan NAME`` passes status.allocation: an Auto workload the operator runs
    through DRA prints pods with a block claim, not with aws.amazon.com/neuroncore."""
    (workload,) = load_workloads(SAMPLES / "01-resnet50-shared.yaml")
    assert workload.spec.allocation == "Auto"
    out = io.StringIO()
    assert print_plans([workload], "test", "json", out, in_force=in_force) == 0
    pods = json.loads(out.getvalue())["items"]
    assert pods
    for pod in pods:
        limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
        assert bool(pod["spec"].get("resourceClaims")) is claims
        assert ("aws.amazon.com/neuroncore" in limits) is not claims
