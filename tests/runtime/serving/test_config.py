"""Flags, environment variables and their precedence for ``neuron-runtime serve``."""

from __future__ import annotations

import pytest

from neuron_cores.models import ModelEntry
from neuron_runtime.serving.cli import build_parser
from neuron_runtime.serving.config import (
    ConfigError,
    ServeConfig,
    config_from_args,
    parse_models_env,
)


def _config(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    return config_from_args(build_parser().parse_args(argv), env or {})


def test_defaults() -> None:
    config = _config(["--model", "a=/m/a"])
    assert config == ServeConfig(models=(ModelEntry("a", "/m/a"),))
    assert (config.http_port, config.grpc_port, config.host) == (8000, 8001, "0.0.0.0")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=/m/a", [("a", "/m/a")]),
        ("a=/m/a,b=/m/b,a=/m/a", [("a", "/m/a"), ("b", "/m/b"), ("a", "/m/a")]),
        (" a = /m/a , ", [("a", "/m/a")]),
        ("", []),
    ],
    ids=["one", "copies-in-order", "spaces", "empty"],
)
def test_models_env(value: str, expected: list[tuple[str, str]]) -> None:
    assert parse_models_env(value) == tuple(ModelEntry(n, p) for n, p in expected)


@pytest.mark.parametrize(
    "value", ["a", "a=", "=p", "a b=p", "-a=p", "a/b=p"],
    ids=["no-sep", "no-path", "no-name", "space", "dash-first", "slash"],
)  # fmt: skip
def test_bad_model_pairs(value: str) -> None:
    with pytest.raises(ConfigError, match="is not NAME=PATH"):
        parse_models_env(value)


def test_flags_win_over_env_and_env_over_defaults() -> None:
    env = {
        "NEURON_MODELS": "e=/m/e",
        "NEURON_HTTP_PORT": "9000",
        "NEURON_GRPC_PORT": "9001",
        "NEURON_SERVE_HOST": "127.0.0.5",
        "NEURON_LOG_FORMAT": "JSON",
        "NEURON_SERVE_DRAIN_DELAY": "2.5",
    }
    from_env = _config([], env)
    assert from_env.models == (ModelEntry("e", "/m/e"),)
    assert (from_env.http_port, from_env.grpc_port, from_env.host) == (9000, 9001, "127.0.0.5")
    assert (from_env.log_format, from_env.drain_delay_s) == ("json", 2.5)
    flags = _config(["--model", "f=/m/f", "--http-port", "7000", "--grpc-port", "0"], env)
    assert flags.models == (ModelEntry("f", "/m/f"),)
    assert (flags.http_port, flags.grpc_port) == (7000, None)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "no models to serve"),
        (["--model", "a=p", "--http-port", "0"], "--http-port/NEURON_HTTP_PORT: '0' must be"),
        (["--model", "a=p", "--grpc-port", "x"], "--grpc-port/NEURON_GRPC_PORT"),
        (["--model", "a=p", "--max-body-bytes", "10"], "from 1024"),
        (["--model", "a=p", "--log-format", "xml"], "'xml' is not a choice; choose one of: text"),
        (["--model", "a=p", "--shutdown-grace", "-1"], "seconds, 0 or more"),
        (["--model", "a=p", "--drain-delay", "inf"], "seconds, 0 or more"),
        (["--model", "a=p", "--threads-per-group", "0"], "from 1 to 256"),
        (["--model", "a=p", "--http-port", "\u0668\u0660\u0660\u0660"], "digits 0-9"),
        (["--model", "a=p", "--http-port", "+8000"], "digits 0-9"),
        (["--model", "a=p", "--max-body-bytes", "1_000_000"], "digits 0-9"),
        (["--model", "a=p", "--drain-delay", "\u0663"], "seconds, 0 or more"),
        (["--model", "a=p", "--read-timeout", "0"], "above 0 and at most 3600"),
        (["--model", "a=p", "--read-timeout", "-5"], "above 0"),
        (["--model", "a=p", "--read-timeout", "soon"], "'soon' must be a number of seconds"),
        (["--model", "a=p", "--read-timeout", "1e9"], "at most 3600"),
        (["--model", "a=p", "--read-timeout", "\u0663"], "NEURON_SERVE_READ_TIMEOUT"),
    ],
    ids=["no-models", "http-zero", "grpc-text", "tiny-body", "log-format", "grace", "drain",
         "threads", "port-arabic-indic", "port-plus", "body-underscores", "drain-arabic-indic",
         "read-timeout-zero", "read-timeout-negative", "read-timeout-word", "read-timeout-huge",
         "read-timeout-arabic-indic"],
)  # fmt: skip
def test_bad_settings_are_named(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _config(argv)


def test_help_documents_every_flag_and_its_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, env in [
        ("--model", "NEURON_MODELS"),
        ("--host", "NEURON_SERVE_HOST"),
        ("--http-port", "NEURON_HTTP_PORT"),
        ("--grpc-port", "NEURON_GRPC_PORT"),
        ("--max-body-bytes", "NEURON_SERVE_MAX_BODY_BYTES"),
        ("--log-format", "NEURON_LOG_FORMAT"),
        ("--log-level", "NEURON_LOG_LEVEL"),
        ("--shutdown-grace", "NEURON_SERVE_SHUTDOWN_GRACE"),
        ("--drain-delay", "NEURON_SERVE_DRAIN_DELAY"),
        ("--threads-per-group", "NEURON_SERVE_THREADS_PER_GROUP"),
        ("--read-timeout", "NEURON_SERVE_READ_TIMEOUT"),
    ]:
        assert flag in text
        assert env in text


def test_read_timeout_flag_env_and_default() -> None:
    assert _config(["--model", "a=p"]).read_timeout_s == 60.0
    env = {"NEURON_SERVE_READ_TIMEOUT": "12.5"}
    assert _config(["--model", "a=p"], env).read_timeout_s == 12.5
    assert _config(["--model", "a=p", "--read-timeout", "3"], env).read_timeout_s == 3.0


def test_neuron_runtime_command_has_serve() -> None:
    from neuron_runtime.cli import build_parser as runtime_parser
    from neuron_runtime.serving.cli import run_serve

    args = runtime_parser().parse_args(["serve", "--model", "a=/m/a", "--grpc-port", "0"])
    assert args.func is run_serve
    assert config_from_args(args, {}).grpc_port is None
