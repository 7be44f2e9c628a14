"""The parser of every ``wkr-*`` command: a mistake on the command line is one line on stderr
that names it and says what to do, not argparse's usage block (thirty lines for
``wkr-serving-start``) with the error at its foot.

A flag that does not exist is matched against the real ones, so ``-num_workers 2`` says
``did you mean -num_worker?``; every error ends by pointing at ``-h``.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import NoReturn

__all__ = ["Parser", "suggest_flags"]


class Parser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose errors are one line (exit status 2, as before)."""

    def error(self, message: str) -> NoReturn:
        # "-http_prot" reads as "-h" given "ttp_prot": argparse blames -h for a flag it lacks.
        helped = re.fullmatch(r"argument -h/--help: ignored explicit argument '(.*)'", message)
        if helped:
            message = f"unrecognized arguments: -h{helped.group(1)}"
        hint = suggest_flags(message, [o for a in self._actions for o in a.option_strings])
        self.exit(2, f"{self.prog}: error: {message}{hint}; {self.prog} -h lists every flag\n")


def suggest_flags(message: str, flags: list[str]) -> str:
    """`` (-num_workers: did you mean -num_worker?)`` for argparse's "unrecognized arguments"
    ``message``, naming the closest real flag of each unknown one; ``""`` when none is close."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return ""
    guesses = []
    for word in message[len(prefix):].split():
        name = word.partition("=")[0]
        if not name.startswith("-"):
            continue
        close = difflib.get_close_matches("-" + name.lstrip("-"), flags, n=1, cutoff=0.6)
        if close:
            guesses.append(f"{name}: did you mean {close[0]}?")
    return f" ({'; '.join(guesses)})" if guesses else ""
