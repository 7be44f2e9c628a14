"""A worker module that takes long to import, as one that imports torch at its top does. It
first leaves the file ``$TEST_IMPORT_MARK``, so a test knows the import has begun, then waits
until the test leaves ``$TEST_IMPORT_RELEASE`` (a minute at most): the test decides when the
import ends, so what it does meanwhile happens during the import however slow the machine."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.workers import Doubler
from tests.helpers import wait_until

Path(os.environ["TEST_IMPORT_MARK"]).touch()
wait_until(Path(os.environ["TEST_IMPORT_RELEASE"]).exists, 60, what="the test to end the import")


class Worker(Doubler):
    """The fault suite's doubler, from a module slow to import."""
