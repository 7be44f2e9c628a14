"""``WorkerProcess``: one worker slot of the supervisor, and what it tells the worker process
filling it (:class:`WorkerProcessEnv`: its id, index, device, the supervisor's own pid, which the
worker puts in its heartbeat so ``wkr-serving-check -supervisor PID`` can tell its workers from
another version's of the same name, and the paths of the files they share, all under the
supervisor's run directory):

- ``<worker id>.running``: the ids of the requests in ``predict`` (the worker rewrites it per
  batch), so a death is counted against those only;
- ``<worker id>.failed``: why the worker could not start (``WKR_FAILURE_FILE``);
- ``<worker id>/``: the worker's ``TMPDIR``, so whatever it leaves is removed when it dies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["WorkerProcess", "WorkerProcessEnv"]


@dataclass(frozen=True)
class WorkerProcessEnv:
    """What the supervisor tells one worker process through its environment: written by
    :meth:`WorkerProcess.prepare`, read back in the worker by :meth:`from_environ` (the one
    reader of these variables; :data:`wkr_celery.config.RUNTIME_ENV` keeps them out of the
    settings). A worker started some other way (``celery -A wkr_celery worker``) has none of
    them: its id is made from its host and pid, ``device_id`` is None (the settings'
    ``-device_map`` decides) and ``supervisor`` is 0 (its heartbeat names no supervisor)."""

    worker_id: str = ""
    index: int = 0
    device_id: int | None = None
    running_file: str = ""
    failure_file: str = ""
    supervisor: int = 0  # the pid of the wkr-serving-start that started it; 0: none
    deployed: str = ""  # that wkr-serving-start's start, naming its deploy (.info_owner)

    def to_env(self) -> dict[str, str]:
        env = {"WKR_WORKER_ID": self.worker_id, "WKR_WORKER_INDEX": str(self.index),
               "WKR_RUNNING_FILE": self.running_file, "WKR_FAILURE_FILE": self.failure_file}
        if self.device_id is not None:
            env["WKR_DEVICE_ID"] = str(self.device_id)
        if self.supervisor:
            env["WKR_SUPERVISOR_PID"] = str(self.supervisor)
        if self.deployed:
            env["WKR_DEPLOYED"] = self.deployed
        return env

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerProcessEnv:
        env = os.environ if environ is None else environ
        device = env.get("WKR_DEVICE_ID")
        return cls(
            worker_id=env.get("WKR_WORKER_ID", ""),
            index=int(env.get("WKR_WORKER_INDEX", "0")),
            device_id=None if device is None else int(device),
            running_file=env.get("WKR_RUNNING_FILE", ""),
            failure_file=env.get("WKR_FAILURE_FILE", ""),
            supervisor=int(env.get("WKR_SUPERVISOR_PID") or "0"),
            deployed=env.get("WKR_DEPLOYED", ""),
        )


@dataclass
class WorkerProcess:
    """One worker slot: its device, and the process currently filling it."""

    index: int
    device_id: int
    worker_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    running_file: str = ""
    failure_file: str = ""
    tmp_dir: str = ""
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # deaths in a row, each soon after its start (see Backoff)
    next_start: float = 0.0
    retiring: bool = False  # told to stop for good (an elastic worker no longer needed)
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def prepare(self, worker_id: str, run_dir: str, deployed: str = "") -> dict[str, str]:
        """Name a new process and its files; returns the environment that tells it who it is,
        its device, who started it (this process's pid, and ``deployed``: when) and where its
        files are (``TMPDIR`` among them: what it leaves is removed)."""
        self.worker_id = worker_id
        self.running_file = os.path.join(run_dir, f"{worker_id}.running")
        self.failure_file = os.path.join(run_dir, f"{worker_id}.failed")
        self.tmp_dir = os.path.join(run_dir, worker_id)
        os.makedirs(self.tmp_dir, exist_ok=True)
        told = WorkerProcessEnv(worker_id, self.index, self.device_id, self.running_file,
                                self.failure_file, supervisor=os.getpid(), deployed=deployed)
        return {**told.to_env(), "TMPDIR": self.tmp_dir}

    def in_predict(self) -> list[int]:
        """Inflight ids of the requests that were in ``predict`` when the process died."""
        text = _read(self.running_file)
        return [int(part) for part in text.split(",") if part.strip().isdigit()]

    def start_failure(self) -> str:
        """``"Type: message"`` when the process could not start, else ``""``."""
        return _read(self.failure_file)

    def clean_up(self) -> None:
        """Remove the dead process's files and temporary directory."""
        for path in (self.running_file, self.failure_file):
            try:
                os.unlink(path)
            except OSError:
                pass
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""
