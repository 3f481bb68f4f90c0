"""Flags with their environment variable: precedence, refusals, and what --help shows."""

from __future__ import annotations

import argparse

import pytest

from neuron_cores.flags import (
    Flag,
    FlagError,
    add_flags,
    boolean,
    log_format_flag,
    log_level_flag,
    number,
    resolve,
)
from neuron_cores.logs import LOG_FORMATS, LOG_LEVELS

FLAGS = [
    Flag("--port", "T_PORT", "a port", 8080, parse=number(int, 0, 65535)),
    Flag("--mode", "T_MODE", "a mode", "fast", choices=("fast", "slow")),
    Flag("--name", "T_NAME", "a name"),
    Flag("--nodes", "T_NODES", "node list, '' for none", keep_empty=True),
    Flag("--ns", "T_NS", "namespaces", many=True),
    Flag("--once", "T_ONCE", "once", False, switch=True),
    Flag("--ratio", "T_RATIO", "a ratio", 0.5, parse=float),
    log_level_flag("T_LOG_LEVEL"),
    log_format_flag("T_LOG_FORMAT"),
]


def parse(environ: dict[str, str], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, FLAGS, environ)
    return parser.parse_args(argv)


CASES = [
    ("default", {}, [], "port", 8080),
    ("env", {"T_PORT": "9000"}, [], "port", 9000),
    ("flag-wins", {"T_PORT": "9000"}, ["--port", "7000"], "port", 7000),
    ("flag-wins-over-a-bad-env", {"T_PORT": "x"}, ["--port", "7000"], "port", 7000),
    ("empty-env-is-unset", {"T_PORT": " "}, [], "port", 8080),
    ("choice-env", {"T_MODE": "slow"}, [], "mode", "slow"),
    ("str-env", {"T_NAME": "n"}, [], "name", "n"),
    ("none-default", {}, [], "name", None),
    ("keep-empty", {"T_NODES": ""}, [], "nodes", ""),
    ("many-env", {"T_NS": "a, b,"}, [], "ns", ["a", "b"]),
    ("many-flags-replace-env", {"T_NS": "a"}, ["--ns", "x", "--ns", "y"], "ns", ["x", "y"]),
    ("switch-default", {}, [], "once", False),
    ("switch-env", {"T_ONCE": "yes"}, [], "once", True),
    ("switch-env-false", {"T_ONCE": "0"}, [], "once", False),
    ("switch-flag", {"T_ONCE": "false"}, ["--once"], "once", True),
    ("float-env", {"T_RATIO": "0.25"}, [], "ratio", 0.25),
    ("level-upper-env", {"T_LOG_LEVEL": "WARNING"}, [], "log_level", "warning"),
    ("level-upper-flag", {}, ["--log-level", "ERROR"], "log_level", "error"),
    ("format-upper-env", {"T_LOG_FORMAT": "JSON"}, [], "log_format", "json"),
]


@pytest.mark.parametrize(
    ("environ", "argv", "dest", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_flag_then_env_then_default(
    environ: dict[str, str], argv: list[str], dest: str, expected: object
) -> None:
    assert getattr(parse(environ, argv), dest) == expected


BAD_ENV = [
    ("out-of-range", {"T_PORT": "70000"}, "T_PORT='70000' is not valid for --port: '70000' is out"),
    ("not-a-number", {"T_PORT": "x"}, "T_PORT='x' is not valid for --port: 'x' is not a number"),
    ("builtin-float", {"T_RATIO": "half"}, "T_RATIO='half' is not valid for --ratio: 'half' is no"),
    (
        "choice",
        {"T_MODE": "medium"},
        "T_MODE='medium' is not valid for --mode: 'medium' is not a choice; choose one of: f",
    ),
    ("switch", {"T_ONCE": "maybe"}, "T_ONCE='maybe' is not valid for --once: 'maybe' is not a"),
    ("level", {"T_LOG_LEVEL": "loud"}, "choose one of: debug, info, warning, error"),
    ("format", {"T_LOG_FORMAT": "xml"}, "T_LOG_FORMAT='xml' is not valid for --log-format"),
]


@pytest.mark.parametrize(
    ("environ", "message"), [c[1:] for c in BAD_ENV], ids=[c[0] for c in BAD_ENV]
)
def test_a_bad_variable_is_a_usage_error_naming_it(
    environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        parse(environ, [])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert f"fix or unset {next(iter(environ))}" in err


def test_a_bad_flag_is_argparses_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        parse({}, ["--mode", "medium"])
    assert done.value.code == 2
    assert "argument --mode: 'medium' is not a choice; choose one of: fast, slow" in (
        capsys.readouterr().err
    )


def test_a_variable_is_read_only_by_the_subcommand_that_runs() -> None:
    parser = argparse.ArgumentParser(prog="t")
    commands = parser.add_subparsers(dest="command", required=True)
    add_flags(commands.add_parser("a"), [FLAGS[0]], {"T_PORT": "x"})
    commands.add_parser("b")
    assert parser.parse_args(["b"]).command == "b"


HELP = [
    ("value", FLAGS[0], "a port [env T_PORT, default 8080]"),
    ("unset", FLAGS[2], "a name [env T_NAME, default unset]"),
    ("switch", FLAGS[5], "once [env T_ONCE, default false]"),
    ("empty", Flag("--e", "T_E", "e", ""), "e [env T_E, default empty]"),
    ("list", Flag("--l", "T_L", "l", ("a", "b")), "l [env T_L, default a,b]"),
    (
        "shown",
        Flag("--s", "T_S", "s", shown_default="hostname-pid"),
        "s [env T_S, default hostname-pid]",
    ),
]


@pytest.mark.parametrize(("flag", "text"), [c[1:] for c in HELP], ids=[c[0] for c in HELP])
def test_help_names_the_variable_and_the_default(flag: Flag, text: str) -> None:
    assert flag.help_text().endswith(text)


def test_every_flag_in_help_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse({}, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        assert flag.name in out
        assert f"[env {flag.env}, default" in out


RESOLVE = [
    ("flag", "7", {"T_PORT": "9"}, 7),
    ("env", None, {"T_PORT": "9"}, 9),
    ("default", None, {}, 8080),
]


@pytest.mark.parametrize(
    ("given", "environ", "expected"), [c[1:] for c in RESOLVE], ids=[c[0] for c in RESOLVE]
)
def test_resolve_is_the_same_rule_over_a_mapping(
    given: str | None, environ: dict[str, str], expected: object
) -> None:
    assert resolve(FLAGS[0], given, environ) == expected


@pytest.mark.parametrize(
    ("given", "environ", "message"),
    [
        ("x", {}, "--port/T_PORT: 'x' is not a number; give a whole number from 0 to 65535"),
        (None, {"T_PORT": "-1"}, "T_PORT='-1' is not valid for --port: '-1' is out of range"),
    ],
    ids=["flag", "env"],
)
def test_resolve_names_where_a_bad_value_came_from(
    given: str | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(FlagError, match=message):
        resolve(FLAGS[0], given, environ)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("TRUE", True), (" on ", True), ("1", True), ("No", False), ("off", False)],
    ids=["upper", "spaces", "one", "no", "off"],
)
def test_boolean_words(text: str, expected: bool) -> None:
    assert boolean(text) is expected


def test_one_log_level_list_and_one_log_format_list() -> None:
    assert LOG_LEVELS == ("debug", "info", "warning", "error")
    assert LOG_FORMATS == ("text", "json")
    assert log_level_flag("X").choices == LOG_LEVELS
    assert log_format_flag("X").choices == LOG_FORMATS
