"""Console scripts: ``wkr-serving-make``, ``wkr-serving-terminate``, ``wkr-serving-check``,
``wkr-decentral-make``; also ``python -m wkr_celery.production <command> …``.

Exit codes: 0 done / healthy; 1 not done / not healthy (the message says why); 2 bad flags.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import ConfigError
from .args import Option, fail, names_results, parse_service_flags, take_options, usage
from .command import decentral_command, flag_value, serving_command
from .health import check_http, check_service
from .script import render_script
from .systemd import render_unit
from .terminate import terminate_service

__all__ = [
    "serving_make_main",
    "serving_terminate_main",
    "serving_check_main",
    "decentral_make_main",
    "http_check_main",
    "main",
]

T = TypeVar("T")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._@+-]+")
_FORMAT = Option("format", str, "sh", "what to print", choices=("sh", "systemd"))
_SERVICE_FLAGS = ("Every wkr-serving-start flag is accepted (see wkr-serving-start -h); "
                  "WKR_* environment variables count as they do there.")


def _argv(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)


def _wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _safe_name(name: str, prog: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{prog} needs -name made of letters, digits and ._@+- "
                          f"(it names the pid file and the unit), got {name!r}")
    return name


def serving_make_main(argv: Sequence[str] | None = None) -> int:
    """``wkr-serving-make module.Worker …flags… -name SERVICE [-format sh|systemd]``."""
    prog, args = "wkr-serving-make", _argv(argv)
    if _wants_help(args):
        print(usage(prog, "module.Worker [wkr-serving-start flags] -name SERVICE "
                    "[-format sh|systemd] > run_script.sh", [_FORMAT], _SERVICE_FLAGS))
        return 0
    try:
        own, rest = take_options(args, [_FORMAT])
        spec = serving_command(rest)
        _safe_name(spec.name, prog)
    except ConfigError as exc:
        return fail(prog, exc)
    sys.stdout.write(render_unit(spec) if own["format"] == "systemd" else render_script(spec))
    return 0


def decentral_make_main(argv: Sequence[str] | None = None) -> int:
    """``wkr-decentral-make module.Class …flags… -name NAME [-format sh|systemd]``.

    The flags go to ``wkr-decentral-start`` untouched (``-name`` too); only ``-format`` is ours.
    """
    prog, args = "wkr-decentral-make", _argv(argv)
    if _wants_help(args):
        print(usage(prog, "module.ProcessingModel [wkr-decentral-start flags] -name NAME "
                    "[-format sh|systemd] > run_script.sh", [_FORMAT],
                    "Every other flag is passed to wkr-decentral-start as given; with "
                    "-http_port, status asks that port whether the process serves."))
        return 0
    try:
        own, rest = take_options(args, [_FORMAT])
        name = flag_value(rest, "-name")
        if name is None:
            raise ConfigError(f"{prog} needs -name NAME: it names the pid file")
        port_text = flag_value(rest, "-http_port") or "0"
        if not port_text.isdigit():
            raise ConfigError(f"-http_port {port_text!r} is not a port number")
        spec = decentral_command(rest, name=_safe_name(name, prog), http_port=int(port_text))
    except ConfigError as exc:
        return fail(prog, exc)
    sys.stdout.write(render_unit(spec) if own["format"] == "systemd" else render_script(spec))
    return 0


_TIMEOUT = Option("timeout", float, 3.0, "seconds to wait for each answer")
_WAIT = Option("wait", float, 0.0, "keep checking up to this many seconds until healthy")
_PROBE = Option("probe", bool, False,
                "also send one real request (zeros of the input shape), at high priority")
_QUIET = Option("quiet", bool, False, "print only problems")
_LOCAL = Option("local", bool, False, "count only this host's workers (a container's own probe)")
_SUPERVISOR = Option("supervisor", int, 0, "count only the workers that the wkr-serving-start "
                     "with this pid started here; 0: any")


def serving_check_main(argv: Sequence[str] | None = None) -> int:
    """``wkr-serving-check -name NAME [-broker_url URL | -port_in N] [-timeout s] [-wait s]
    [-supervisor PID]``."""
    prog, args = "wkr-serving-check", _argv(argv)
    options = [_TIMEOUT, _WAIT, _PROBE, _LOCAL, _SUPERVISOR, _QUIET]
    if _wants_help(args):
        print(usage(prog, "[module.Worker] -name NAME [-broker_url URL | -port_in PORT] "
                    "[options]", options, _SERVICE_FLAGS + " Only -name and the broker "
                    "(-broker_url, or -port_in for the embedded Redis) matter here."))
        return 0
    try:
        own, rest = take_options(args, options)
        settings = parse_service_flags(prog, rest)
    except ConfigError as exc:
        return fail(prog, exc)
    timeout, probe, local = float(own["timeout"]), bool(own["probe"]), bool(own["local"])
    given, supervisor = names_results(rest), int(own["supervisor"])
    report = _retry(lambda: check_service(settings, timeout=timeout, probe=probe, local=local,
                                          results_given=given, supervisor=supervisor),
                    lambda r: r.healthy, float(own["wait"]))
    if not report.healthy:
        print(f"{prog}: {report.summary()}", file=sys.stderr)
        return 1
    if not own["quiet"]:
        print(report.summary())
    return 0


def http_check_main(argv: Sequence[str] | None = None) -> int:
    """``python -m wkr_celery.production http-check URL [-timeout s] [-wait s]``."""
    prog, args = "http-check", _argv(argv)
    try:
        own, rest = take_options(args, [_TIMEOUT, _WAIT])
        if len(rest) != 1:
            raise ConfigError("give one URL")
    except ConfigError as exc:
        return fail(prog, exc)
    problem = _retry(lambda: check_http(rest[0], float(own["timeout"])),
                     lambda p: not p, float(own["wait"]))
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 1
    print(f"{rest[0]} answers")
    return 0


_FORCE = Option("force", bool, False, "kill at once (SIGKILL) instead of stopping gracefully")
_STOP_TIMEOUT = Option("timeout", float, 60.0, "seconds to wait for a graceful stop")


def serving_terminate_main(argv: Sequence[str] | None = None) -> int:
    """``wkr-serving-terminate -name NAME [-broker_url URL | -port_in N] [-force] [-timeout s]``."""
    prog, args = "wkr-serving-terminate", _argv(argv)
    options = [_FORCE, _STOP_TIMEOUT]
    if _wants_help(args):
        print(usage(prog, "-name NAME [-broker_url URL | -port_in PORT] [options]", options,
                    _SERVICE_FLAGS + " Only -name and the broker matter here. Processes are "
                    "found through the workers' heartbeats (pid, host) and their parents."))
        return 0
    try:
        own, rest = take_options(args, options)
        settings = parse_service_flags(prog, rest)
    except ConfigError as exc:
        return fail(prog, exc)
    report = terminate_service(settings, force=bool(own["force"]),
                               timeout=float(own["timeout"]))
    for note in report.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if report.elsewhere and report.ok:
        print(f"{prog}: note: workers on other hosts were left running: "
              f"{', '.join(report.elsewhere)}", file=sys.stderr)
    if not report.ok:
        print(f"{prog}: {report.problem}", file=sys.stderr)
        return 1
    how = "killed" if own["force"] else "stopped"
    extra = f"; {report.requeued} request(s) put back on the queue" if own["force"] else ""
    print(f"service {settings.name!r} {how} (pids {list(report.signalled)}){extra}")
    return 0


def _retry(check: Callable[[], T], good: Callable[[T], bool], wait: float) -> T:
    """Run ``check`` until ``good`` says so or ``wait`` seconds pass; the last result."""
    deadline = time.monotonic() + wait
    while True:
        result = check()
        if good(result) or time.monotonic() >= deadline:
            return result
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


_COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "make": serving_make_main,
    "check": serving_check_main,
    "terminate": serving_terminate_main,
    "decentral-make": decentral_make_main,
    "http-check": http_check_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wkr_celery.production {make|check|terminate|decentral-make|http-check} …``."""
    args = _argv(argv)
    if not args or args[0] not in _COMMANDS:
        print(f"usage: python -m wkr_celery.production {{{'|'.join(_COMMANDS)}}} ...",
              file=sys.stderr)
        return 2
    return _COMMANDS[args[0]](args[1:])
