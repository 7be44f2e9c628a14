"""Flags of the production commands: every ``wkr-serving-start`` flag, plus a few of their own.

The service flags are parsed by :func:`wkr_celery.config.build_parser`, the parser of
``wkr-serving-start`` itself, so the commands here can never drift from it; a command's own
options (``-format``, ``-timeout``…) are taken out of the argument list first.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Settings, build_parser, seconds_from_flags
from ..errors import ConfigError

__all__ = ["Option", "take_options", "parse_service_flags", "refuse_like_decentral_start",
           "usage"]


@dataclass(frozen=True)
class Option:
    """One option of a production command: ``-name value``, or a switch when ``kind`` is bool."""

    name: str
    kind: type
    default: object
    help: str
    choices: tuple[str, ...] = ()

    def convert(self, text: str) -> object:
        try:
            value = self.kind(text)
        except ValueError:
            raise ConfigError(
                f"-{self.name} {text!r} is not a valid {self.kind.__name__}") from None
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"-{self.name} must not be negative, got {text}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"-{self.name} {text!r} is not one of {', '.join(self.choices)}")
        return value


def take_options(
    argv: Sequence[str], options: Sequence[Option]
) -> tuple[dict[str, Any], list[str]]:
    """Split ``argv`` into this command's own options and the rest, which keeps its order."""
    by_flag = {f"-{opt.name}": opt for opt in options}
    values: dict[str, Any] = {opt.name: opt.default for opt in options}
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        flag, eq, inline = items[i].partition("=")
        opt = by_flag.get(flag)
        if opt is None:
            rest.append(items[i])
        elif opt.kind is bool:
            if eq:
                raise ConfigError(f"{flag} is a switch; it takes no value")
            values[opt.name] = True
        elif eq:
            values[opt.name] = opt.convert(inline)
        elif i + 1 < len(items):
            i += 1
            values[opt.name] = opt.convert(items[i])
        else:
            raise ConfigError(f"{flag} needs a value")
        i += 1
    return values, rest


def parse_service_flags(
    prog: str, argv: Sequence[str], *, environ: Mapping[str, str] | None = None,
    worker_class_optional: bool = True,
) -> Settings:
    """Settings from ``wkr-serving-start`` flags on top of ``WKR_*`` variables, as it reads them.

    The worker class (its positional argument) is optional when only the service's name and
    broker matter, as for a health check.
    """
    base = Settings.from_env(environ)
    parser = _service_parser(prog, base, worker_class_optional)
    return base.replace(**seconds_from_flags(vars(parser.parse_args(list(argv)))))


def names_results(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``argv`` (``-port_out``, ``-result_url``) or the environment (``WKR_PORT_OUT``,
    ``WKR_RESULT_URL``) names the result Redis. A tool that only reads answers follows where
    the service says it stores them otherwise: ``-port_out``'s default (8998) is no evidence."""
    environ = os.environ if environ is None else environ
    flags = {arg.partition("=")[0] for arg in argv}
    return bool(flags & {"-port_out", "-result_url"}) or any(
        environ.get(key) for key in ("WKR_PORT_OUT", "WKR_RESULT_URL"))


def refuse_like_decentral_start(prog: str, argv: Sequence[str]) -> None:
    """Raise (or exit 2, as argparse does) where ``wkr-decentral-start argv`` would refuse.

    Its own parser reads the flags; its own loader imports the worker class from the current
    directory, where the generated script will run it.
    """
    from ..decentral.config import DecentralSettings, build_start_parser
    from ..decentral.worker import WKRWorker
    from ..worker_class import load_class

    parser = build_start_parser()
    parser.prog = prog
    settings = DecentralSettings(**vars(parser.parse_args(list(argv))))
    try:
        load_class(settings.worker_class, WKRWorker)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (imported from {os.getcwd()}, where the script will start "
                          "it)") from exc


def _service_parser(
    prog: str, base: Settings, worker_class_optional: bool
) -> argparse.ArgumentParser:
    parser = build_parser(base)
    parser.prog = prog
    if worker_class_optional:
        for action in parser._actions:  # argparse offers no public way to relax a positional
            if action.dest == "worker_class":
                action.nargs = "?"
                action.default = base.worker_class
    return parser


def usage(prog: str, summary: str, options: Sequence[Option], service_flags: str) -> str:
    """Help text: this command's options, then which ``wkr-serving-start`` flags it reads."""
    lines = [f"usage: {prog} {summary}", ""]
    for opt in options:
        shown = "|".join(opt.choices) or opt.kind.__name__.upper()
        value = "" if opt.kind is bool else f" {shown}"
        default = "" if opt.kind is bool else f" (default: {opt.default})"
        lines.append(f"  -{opt.name}{value}".ljust(24) + f"{opt.help}{default}")
    lines += ["", service_flags]
    return "\n".join(lines)


def fail(prog: str, message: object, code: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
