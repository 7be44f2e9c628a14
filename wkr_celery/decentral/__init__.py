"""Decentralize mode: groups of processing units (``WKRWorker``) that feed wkr-celery services.

``wkr-decentral-start module.Worker -remote_servers [[ip, port_in, port_out], …] -num_client N``
runs a central (:class:`WKRDecentralizeCentral`) that keeps ``N`` unit processes per remote
server alive; ``wkr-decentral-status|switch|idle|restart|terminate`` talk to it through Redis.
"""

from .central import WKRDecentralizeCentral
from .config import DecentralSettings, RemoteServer, parse_remote_servers
from .control import ControlClient
from .worker import WKRWorker

__all__ = [
    "WKRWorker",
    "WKRDecentralizeCentral",
    "DecentralSettings",
    "RemoteServer",
    "parse_remote_servers",
    "ControlClient",
]
