"""Production operation: run scripts, systemd units, health checks, terminate by name.

``wkr-serving-make`` / ``wkr-decentral-make`` print a run script (:func:`render_script`) or a
systemd unit (:func:`render_unit`) for a command line; ``wkr-serving-check`` asks whether a
service is serving (:func:`check_service`); ``wkr-serving-terminate`` stops one by name
(:func:`terminate_service`).
"""

from .command import ServiceCommand, decentral_command, serving_command
from .health import HealthReport, check_http, check_service
from .script import render_script
from .systemd import render_unit
from .terminate import TerminateReport, terminate_service

__all__ = [
    "ServiceCommand",
    "serving_command",
    "decentral_command",
    "render_script",
    "render_unit",
    "HealthReport",
    "check_service",
    "check_http",
    "TerminateReport",
    "terminate_service",
]
