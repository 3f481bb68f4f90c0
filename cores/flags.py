"""Command-line flags that name their environment variable beside them.

Every command of the project is configured two ways: in a pod the Helm chart or the operator
sets environment variables, while a person at a terminal types flags.  Each setting is declared
once, as a :class:`Flag` holding its flag name, its variable, how its text is read, its default
and its help, and the same declaration gives argparse its argument, ``--help`` its
``[env NAME, default X]`` note, and the environment fallback.  Precedence is flag, then
variable, then default.

A variable is read only when the command that declares it runs and its flag is not given, so a
bad value in the environment of one subcommand never breaks another.  A bad value is refused
the way argparse refuses a bad flag (a usage error, exit 2), naming the variable, the value and
what it accepts.  An empty variable counts as unset unless the flag says ``keep_empty``.

``resolve`` is the same rule as a pure function over a mapping, for commands that keep their
configuration step apart from argument parsing (``neuron-runtime serve``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuron_cores.logs import LOG_FORMATS, LOG_LEVELS

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# What a builtin's own ValueError means, said in words (int('x') says "invalid literal ...").
_KIND_WORDS: dict[object, str] = {int: "a whole number", float: "a number"}


class FlagError(ValueError):
    """A value that cannot be used; the message names where it came from and what is accepted."""


def boolean(text: str) -> bool:
    """true/false, yes/no, on/off or 1/0, in any case."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a boolean; use one of {', '.join(TRUE_WORDS + FALSE_WORDS)}"
    )


def number(
    kind: type[int] | type[float], low: float, high: float | None = None
) -> Callable[[str], Any]:
    """A parser of a number in [low, high] (no upper bound when ``high`` is None)."""
    bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
    wanted = f"a whole number {bounds}" if kind is int else f"a number {bounds}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {wanted}") from None
        if not low <= value <= (float("inf") if high is None else high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; give a number {bounds}")
        return value

    parse.__name__ = kind.__name__
    return parse


@dataclass(frozen=True)
class Flag:
    """One setting: its flag, its environment variable, how its text is read, and its default.

    ``many`` makes a repeatable flag whose variable
    holds a comma-separated list.  ``switch`` makes a flag that takes no value (true when given)
    whose variable holds a boolean word.  ``shown_default`` replaces the default in ``--help``
    when it is worked out at run time.  ``options`` go to ``add_argument`` unchanged (``nargs``,
    ``const``, ``dest``).
    """

    name: str
    env: str
    help: str
    default: object = None
    parse: Callable[[str], object] = str
    choices: Sequence[str] | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    keep_empty: bool = False
    many: bool = False
    switch: bool = False
    shown_default: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        dest = self.options.get("dest")
        return str(dest) if dest else self.name.lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        if self.shown_default is not None:
            shown = self.shown_default
        elif self.default is None or self.default is False:
            shown = "unset" if self.default is None else "false"
        elif self.default == "":
            shown = "empty"
        elif isinstance(self.default, (list, tuple)):
            shown = ",".join(str(v) for v in self.default) or "empty"
        elif isinstance(self.default, float):
            shown = f"{self.default:g}"
        else:
            shown = str(self.default)
        return f"{self.help} [env {self.env}, default {shown}]"

    def convert(self, text: str) -> object:
        """The value of ``text``; argparse.ArgumentTypeError or ValueError with the reason."""
        value = self.parse(text)
        if self.choices is not None and value not in self.choices:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a choice; choose one of: {', '.join(self.choices)}"
            )
        return value

    def env_text(self, environ: Mapping[str, str]) -> str | None:
        """The variable's text; None when it is unset (or empty, unless ``keep_empty``)."""
        text = environ.get(self.env)
        if text is None or not (text.strip() or self.keep_empty):
            return None
        return text

    def from_env(self, text: str) -> object:
        """The value the variable gives; FlagError naming the variable, the value and the fix."""
        try:
            if self.switch:
                return boolean(text)
            if self.many:
                return [self.convert(item.strip()) for item in text.split(",") if item.strip()]
            return self.convert(text)
        except (ValueError, argparse.ArgumentTypeError) as err:
            reason = _reason(self.parse, err, text)
            raise FlagError(
                f"{self.env}={text!r} is not valid for {self.name}: {reason}; "
                f"fix or unset {self.env}"
            ) from None


def _reason(parse: object, err: Exception, text: str) -> str:
    if parse in _KIND_WORDS and not isinstance(err, argparse.ArgumentTypeError):
        return f"{text!r} is not {_KIND_WORDS[parse]}"
    return str(err)


def resolve(flag: Flag, given: str | None, environ: Mapping[str, str]) -> object:
    """``given`` (the flag's text, None when absent), else the variable, else the default.

    Raises FlagError naming the setting (``--flag/VARIABLE``) or the variable set, with the value
    and the accepted forms.
    """
    if given is not None:
        try:
            return flag.convert(given)
        except (ValueError, argparse.ArgumentTypeError) as err:
            reason = _reason(flag.parse, err, given)
            raise FlagError(f"{flag.name}/{flag.env}: {reason}") from None
    text = flag.env_text(environ)
    return flag.default if text is None else flag.from_env(text)


class _EnvText(str):
    """A variable's text standing as an argparse default; argparse runs it through ``type``."""


class _Converter:
    """The argparse ``type`` of a flag, choices included (argparse never checks a default
    against ``choices``); a bad variable's message names it."""

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        self.__name__ = getattr(flag.parse, "__name__", "value")

    def __call__(self, text: str) -> object:
        if isinstance(text, _EnvText):
            try:
                return self.flag.from_env(str(text))
            except FlagError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return self.flag.convert(text)


class _Switch(argparse.Action):
    """store_true that also takes a ``type``, so a variable's boolean word is read lazily."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        default: object = False,
        type: Callable[[str], object] | None = None,
        help: str | None = None,
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, type=type, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


class _Append(argparse.Action):
    """append that starts a fresh list over a variable's text (argparse's would append to it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        items = list(current) if isinstance(current, list) else []
        setattr(namespace, self.dest, [*items, values])


def _metavar(flag: Flag) -> str | None:
    if flag.metavar or not flag.choices:
        return flag.metavar
    return "{" + ",".join(flag.choices) + "}"


def _add_flag(parser: argparse.ArgumentParser, flag: Flag, environ: Mapping[str, str]) -> None:
    text = flag.env_text(environ)
    kwargs: dict[str, Any] = {
        "default": flag.default if text is None else _EnvText(text),
        "help": flag.help_text(),
        "type": _Converter(flag),
        **flag.options,
    }
    if flag.switch:
        kwargs["action"] = _Switch
    else:  # choices are checked by the converter, in the same words for flag and variable
        kwargs["metavar"] = _metavar(flag)
    if flag.many:
        kwargs["action"] = _Append
    parser.add_argument(flag.name, *flag.aliases, **kwargs)


def _add_unresolved(parser: argparse.ArgumentParser, flag: Flag) -> None:
    kwargs: dict[str, Any] = {"default": None, "help": flag.help_text(), **flag.options}
    if flag.many:
        kwargs["action"] = "append"
    parser.add_argument(flag.name, *flag.aliases, metavar=_metavar(flag), **kwargs)


def add_flags(
    parser: argparse.ArgumentParser,
    flags: Iterable[Flag],
    environ: Mapping[str, str] | None = None,
    *,
    resolve_later: bool = False,
) -> None:
    """Add every flag of ``flags`` to ``parser``.

    Each variable is looked up in ``environ`` (default: the process environment) now, and read
    (a bad value refused with exit 2) only when this parser parses and the flag is absent.
    ``resolve_later``: the parser keeps each flag's text as given (None when absent), for a
    configuration step that calls :func:`resolve` with the environment itself.
    """
    env = os.environ if environ is None else environ
    for flag in flags:
        if resolve_later:
            _add_unresolved(parser, flag)
        else:
            _add_flag(parser, flag, env)


def log_level_flag(env: str, default: str = "info") -> Flag:
    """``--log-level``: one of LOG_LEVELS, in any case."""
    return Flag(
        "--log-level",
        env,
        "log level",
        default,
        parse=str.lower,
        choices=LOG_LEVELS,
    )


def log_format_flag(env: str) -> Flag:
    """``--log-format``: text for people, or json (one object per line), in any case."""
    return Flag(
        "--log-format",
        env,
        "log lines as text, or as one JSON object per line (json)",
        "text",
        parse=str.lower,
        choices=LOG_FORMATS,
    )
