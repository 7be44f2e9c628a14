"""``from wkr_serving.server.helper import get_args_parser, import_tf``: wkr-celery's helpers."""

from wkr_celery.server.helper import get_args_parser, import_tf, import_torch, pin_device

__all__ = ["get_args_parser", "import_tf", "import_torch", "pin_device"]
