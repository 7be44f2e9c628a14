"""``wkr_serving``: the original worker-as-service's import paths, served by wkr-celery.

Code written for the original runs unchanged where the getting-started guide's own code works
(docs/compat.md lists what the guide's examples needed). This distribution installs the package
as ``wkr_serving`` (its source is ``wkr_celery/_wkr_serving``); every name in it is
wkr-celery's own object, except ``wkr_serving.client.WKRClient``, whose ``encode`` blocks and
returns the result, as the original's did.
"""

from wkr_celery.version import __version__

__all__ = ["__version__"]
