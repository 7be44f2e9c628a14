"""Workers that misbehave on request, for the fault suite (``tests.faults.workers.<Class>``).

Inputs are small ``obj`` payloads: an int ``n`` is answered with ``n * 2``; the strings
``"raise"`` and ``"exit"`` make ``predict`` raise or kill its own process, and ``"sysexit"``
raises ``SystemExit`` (which, like any exception, fails that input alone).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from wkr_celery.server import WKRHardWorker


class Doubler(WKRHardWorker):
    """Doubles ints; raises on ``"raise"``; dies on ``"exit"``; ``sys.exit()`` on ``"sysexit"``."""

    #: Seconds each ``predict`` call takes, so a queue builds up under load.
    batch_seconds = 0.0

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        if self.batch_seconds:
            time.sleep(self.batch_seconds)
        out = []
        for x in input:
            if x == "raise":
                raise ValueError("this input is poison: predict raises on it")
            if x == "exit":
                os._exit(17)
            if x == "sysexit":
                raise SystemExit(3)  # not an Exception, but the runner bisects it all the same
            out.append(x * 2)
        return out


class SlowDoubler(Doubler):
    """Ten milliseconds a batch: requests queue up behind each other."""

    batch_seconds = 0.01


class TenthDoubler(Doubler):
    """A tenth of a second a batch: a stop or a kill lands while batches are in predict and
    most requests still wait in the queue."""

    batch_seconds = 0.1


class VerySlowDoubler(Doubler):
    """Half a second a batch: a request queued behind one batch misses a short deadline."""

    batch_seconds = 0.5


class NeedsModelFile(Doubler):
    """Loads "a model" from the file named by ``TEST_MODEL_FILE``: while it is missing,
    ``get_model`` raises and the worker cannot start (a crash loop until the file appears)."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        path = os.environ["TEST_MODEL_FILE"]
        with open(path) as handle:  # FileNotFoundError names the path
            return handle.read()


class SlowLoader(Doubler):
    """A model that takes two minutes to load, as a large one can: ``get_model`` first leaves a
    file named by its pid in ``$TEST_LOADING_DIR``, so a test knows the load has begun."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        with open(os.path.join(os.environ["TEST_LOADING_DIR"], str(os.getpid())), "w"):
            pass
        time.sleep(120)
        return None


class HelperStarter(Doubler):
    """A model with helper processes, as a data loader's workers or a tokenizer's pool are:
    ``tail -f`` in the worker's own process group, and a watcher (``sh``) in a session of its
    own, which exits once the worker is gone (an orphan that dies, for its new parent to reap)."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        self.helpers = [
            subprocess.Popen(["tail", "-f", "/dev/null"]),
            subprocess.Popen(["sh", "-c", 'while kill -0 "$1" 2>/dev/null; do sleep 0.1; done',
                              "watcher", str(os.getpid())], start_new_session=True),
        ]
        return None


class MemoryHog(Doubler):
    """On the input ``"hog"``, ``predict`` takes memory (64 MB at a time, written) until the
    kernel's OOM killer ends its process, as a batch too large for a container's limit does."""

    def predict(self, model: Any, input: Any) -> list[Any]:
        held = []
        while "hog" in list(input):
            held.append(bytearray(64 << 20))
            held[-1][::4096] = b"x" * len(held[-1][::4096])
        return super().predict(model, input)
