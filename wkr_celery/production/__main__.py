"""``python -m wkr_celery.production check|terminate|make|decentral-make|http-check …``."""

import sys

from .cli import main

sys.exit(main())
