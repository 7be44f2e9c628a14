"""A worker module that takes seconds to import, as one that imports torch at its top does. It
first leaves the file ``$TEST_IMPORT_MARK``, so a test knows the import has begun, then waits
``$TEST_IMPORT_SECONDS``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.faults.workers import Doubler

Path(os.environ["TEST_IMPORT_MARK"]).touch()
time.sleep(float(os.environ["TEST_IMPORT_SECONDS"]))


class Worker(Doubler):
    """The fault suite's doubler, from a module slow to import."""
