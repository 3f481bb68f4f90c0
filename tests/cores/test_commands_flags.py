"""Every command's --help shows each env-backed flag as ``[env NAME, default X]``, the same way.

The commands' own tests check their flags; this checks the rule across all of them, so a flag
added without its variable, or written out by hand in another format, is caught.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

import pytest

from neuron_device_plugin.cli import build_parser as device_plugin_parser
from neuron_dra_driver.cli import build_parser as dra_driver_parser
from neuron_localcluster.cli import build_parser as localcluster_parser
from neuron_operator.cli import build_parser as operator_parser
from neuron_runtime.cli import build_parser as runtime_parser

ENV_NOTE = re.compile(r"\[env [A-Z][A-Z0-9_]*, default [^\]]+\]$")


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = commands.choices[name]
    return sub


COMMANDS = [
    ("neuron-device-plugin", lambda: device_plugin_parser(environ={}), set()),
    ("neuron-dra-driver", lambda: dra_driver_parser(environ={}), set()),
    ("neuron-operator plan", lambda: _sub(operator_parser(), "plan"), set()),
    (
        "neuron-operator run",
        lambda: _sub(operator_parser(), "run"),
        {"--all-namespaces", "--standalone"},  # the flag forms of --namespace, --leader-election
    ),
    ("neuron-runtime cores", lambda: _sub(runtime_parser(), "cores"), {"--json"}),
    (
        "neuron-runtime compile",
        lambda: _sub(runtime_parser(), "compile"),
        {"--arch", "--cores", "--out", "--seed", "--name", "--width", "--depth", "--input-dim"}
        | {"--classes", "--image-size", "--blocks"},  # what to build: no variables
    ),
    ("neuron-runtime serve", lambda: _sub(runtime_parser(), "serve"), set()),
    ("neuron-localcluster", localcluster_parser, set()),
    ("neuron-localcluster up", lambda: _sub(localcluster_parser(), "up"), {"--recreate"}),
    ("neuron-localcluster demo", lambda: _sub(localcluster_parser(), "demo"), set()),
    ("neuron-localcluster build", lambda: _sub(localcluster_parser(), "build"), set()),
]


@pytest.mark.parametrize(
    ("make", "without_env"), [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS]
)
def test_every_flag_shows_its_variable_and_default(
    make: Callable[[], argparse.ArgumentParser], without_env: set[str]
) -> None:
    parser = make()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    plain = {a.option_strings[0] for a in options if not ENV_NOTE.search(a.help or "")}
    assert plain == without_env
    text = " ".join(parser.format_help().split())
    for action in options:
        if action.option_strings[0] not in without_env:
            assert ENV_NOTE.search(" ".join((action.help or "").split())), action.option_strings
            assert action.option_strings[0] in text
