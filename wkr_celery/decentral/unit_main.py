"""``python -m wkr_celery.decentral.unit_main '<spec json>'``: the entry point of a unit process.

Kept apart from :mod:`.unit`, which the package imports, so ``-m`` never runs a module that is
already imported (runpy warns about that).
"""

import sys

from .unit import main

if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
