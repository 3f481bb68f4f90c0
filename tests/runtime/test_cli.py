from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from neuron_runtime.arbiter import CoreArbiter
from neuron_runtime.cli import build_parser, main
from neuron_runtime.config import ENVIRONMENT_HELP


@pytest.mark.parametrize(
    "argv", [[], ["cores"], ["compile"], ["serve"]], ids=["top", "cores", "compile", "serve"]
)
def test_help_documents_every_flag_and_env_var(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    choices: dict[str, argparse.ArgumentParser] = dict(subparsers.choices or {})
    target = choices[argv[0]] if argv else parser
    for action in target._actions:
        for flag in action.option_strings:
            assert flag in text
    if argv != ["compile"]:
        for name, _ in ENVIRONMENT_HELP:
            assert name in text


def test_cores_lists_free_and_held(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with CoreArbiter(tmp_path, 3).claim([1], group_sizes="1"):
        assert main(["cores", "--state-dir", str(tmp_path), "--node-cores", "3"]) == 0
        text = capsys.readouterr().out
        assert main(["cores", "--state-dir", str(tmp_path), "--node-cores", "3", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    lines = [line for line in text.splitlines() if line.startswith("core")]
    assert "free" in lines[0] and "held by pid" in lines[1] and "free" in lines[2]
    assert [row["holder"] is None for row in data["cores"]] == [True, False, True]


def test_cores_uses_instance_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cores", "--state-dir", str(tmp_path), "--instance-type", "inf1.6xlarge"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("free") == 16


def test_compile_writes_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compile", "--arch", "mlp", "--cores", "2", "--out", str(tmp_path / "m"),
            "--seed", "3", "--width", "8", "--depth", "2", "--input-dim", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "compiled mlp for 2 NeuronCores" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert (manifest["cores"], manifest["seed"], manifest["size"]["width"]) == (2, 3, 8)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "--arch", "mlp", "--cores", "9", "--depth", "2"], "cannot split 3 layers"),
        (["compile", "--arch", "mlp", "--cores", "1", "--image-size", "64"], "no size knob"),
        (["compile", "--arch", "resnet50", "--cores", "1", "--width", "8"], "fixed shape"),
        (["compile", "--arch", "mlp", "--cores", "0"], "positive count"),
        (["cores", "--instance-type", "inf9.big"], "'inf9.big'"),
        (["cores", "--node-cores", "0"], "NEURON_SIM_CORES='0' is not valid"),
    ],
    ids=[
        "too-many-cores", "wrong-knob", "resnet50-fixed", "zero-cores", "bad-instance-type",
        "zero-node-cores",
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] == "compile":
        argv = [*argv, "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"neuron-runtime {argv[0]}: error:" in err
    assert message in err


@pytest.mark.parametrize("command", ["cores", "compile"])
def test_bad_log_level_is_a_clear_error(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURON_RT_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as done:
        main([command, "--node-cores", "2"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "NEURON_RT_LOG_LEVEL='loud' is not valid for --log-level" in err
    assert "choose one of: debug, info, warning, error" in err


def test_serve_reads_one_log_level_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NEURON_RT_LOG_LEVEL is for cores and compile; serve reads NEURON_LOG_LEVEL alone."""
    from neuron_runtime.serving.config import config_from_args

    monkeypatch.setenv("NEURON_RT_LOG_LEVEL", "loud")
    monkeypatch.delenv("NEURON_MODELS", raising=False)
    assert main(["serve"]) == 2  # refused for what serve lacks, not for the runtime's variable
    err = capsys.readouterr().err
    assert "no models to serve" in err
    assert "NEURON_RT_LOG_LEVEL" not in err
    args = build_parser().parse_args(["serve", "--model", "a=/m/a"])
    assert config_from_args(args, {"NEURON_RT_LOG_LEVEL": "debug"}).log_level == "info"
    assert config_from_args(args, {"NEURON_LOG_LEVEL": "DEBUG"}).log_level == "debug"


def test_unwritable_output_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "m"
    assert main(["compile", "--arch", "mlp", "--cores", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "neuron-runtime compile: error: cannot use" in err
    assert str(out) in err
    assert "Traceback" not in err


def test_bad_blocks_value_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compile", "--arch", "resnet", "--cores", "1", "--out", "x", "--blocks", "3,a"])
    assert "'3,a' is not a comma list" in capsys.readouterr().err
