"""Status, health, readiness and metrics routes: what operators and probes read."""

from __future__ import annotations

import os
import platform
from typing import Any

import celery
import fastapi
from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..clock import wall_time
from ..connections import REDIS_ERRORS, redacted
from ..errors import ServiceUnavailable
from ..version import __version__
from .auth import require_key
from .encoding import render, wants_msgpack
from .gateway import Gateway
from .metrics import service_snapshot
from .problems import RETRY_AFTER
from .schemas import ClientStatus, ErrorBody, Health, Ready, ServerStatus

__all__ = ["router", "open_router", "snapshot"]

router = APIRouter(dependencies=[Depends(require_key)])
open_router = APIRouter()


def snapshot(gateway: Gateway) -> dict[str, Any]:
    """Live workers, totals and elastic state; blocking (heartbeats cached)."""
    return service_snapshot(gateway.live_workers(), gateway.queue_length(), gateway.totals(),
                            gateway.scaling())


@router.get("/status/server", response_model=ServerStatus,
            responses={503: {"model": ErrorBody}},
            summary="Service config, workers, devices, queue length, totals, versions")
async def server_status(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway

    def build() -> dict[str, Any]:
        snap = snapshot(gateway)
        info = gateway.info()
        now = wall_time()
        workers = [{**beat, "worker_id": wid, "alive_s": now - float(beat.get("started", now))}
                   for wid, beat in sorted(snap["workers"].items())]
        oldest = min((float(w.get("started", now)) for w in workers), default=now)
        return {
            "name": gateway.settings.name, "config": info,
            "protocol": info.get("protocol", gateway.settings.protocol),
            "batch_size": int(info.get("batch_size") or gateway.settings.batch_size),
            "num_workers_alive": len(workers),
            "devices": sorted({int(w.get("device_id", -1)) for w in workers}),
            "workers": workers, "queue_length": snap["queue_length"], "totals": snap["totals"],
            "batch_sizes": snap["batch_sizes"], "statistics": snap["statistics"],
            "scaling": snap["scaling"],
            "uptime_s": now - oldest, "api_uptime_s": now - gateway.started,
            "versions": {"api": __version__, "service": info.get("version"),
                         "workers": sorted({str(w.get("version")) for w in workers}),
                         "python": platform.python_version(), "celery": celery.__version__,
                         "fastapi": fastapi.__version__},
        }

    return render(await run_in_threadpool(build), msgpack=wants_msgpack(request))


@router.get("/status/client", response_model=ClientStatus,
            summary="This API process as a client of the service")
async def client_status(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    settings = gateway.settings
    client = gateway.waiting_client
    counts: dict[str, float] = {}
    for metric in request.app.state.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['route']} {sample.labels['outcome']}"
                counts[key] = sample.value
    return render({
        "pid": os.getpid(), "client_id": client.client_id if client else None,
        "service": settings.name,
        "broker": redacted(settings.broker), "results": redacted(settings.backend),
        "pending": client.pending if client else 0, "tasks_revocable": len(gateway.registry),
        "api_key_required": bool(settings.http_api_key), "max_body": settings.http_max_body,
        "uptime_s": wall_time() - gateway.started, "requests": counts,
    }, msgpack=wants_msgpack(request))


@open_router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@open_router.get("/readyz", response_model=Ready, summary="Broker and result Redis reachable, a worker alive",
                 responses={503: {"model": Ready, "description": "not ready; see reason"}})
async def readyz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway

    def check() -> dict[str, Any]:
        try:
            gateway.queue.ping()
            workers = len(gateway.live_workers(fresh=True))
        except (ServiceUnavailable, *REDIS_ERRORS) as exc:
            return {"ready": False, "broker": False, "workers": 0,
                    "reason": f"broker not reachable: {exc}"}
        if not workers:
            return {"ready": False, "broker": True, "workers": 0,
                    "reason": f"no worker of service {gateway.settings.name!r} is alive"}
        try:
            gateway.results.ping()
        except (ServiceUnavailable, *REDIS_ERRORS) as exc:
            return {"ready": False, "broker": True, "workers": workers,
                    "reason": f"result Redis {redacted(gateway.result_url())} not reachable: {exc}"}
        return {"ready": True, "broker": True, "workers": workers, "reason": ""}

    state = await run_in_threadpool(check)
    headers = None if state["ready"] else {"Retry-After": str(RETRY_AFTER)}
    return render(state, 200 if state["ready"] else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text"}})
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.exposed
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
