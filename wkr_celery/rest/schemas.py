"""Request and response shapes, for validation of what we build and for the OpenAPI page."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EncodeItem", "EncodeResult", "TaskAccepted", "TaskState", "ErrorBody", "ErrorDetail",
    "Health", "Ready", "ServerStatus", "ClientStatus", "Revoked", "body_schema", "Priority",
]

Priority = Literal["high", "normal", "low"]


class EncodeItem(BaseModel):
    """One input: ``data`` is what ``predict`` receives (a list becomes an array for npy)."""

    id: Any = Field(None, description="echoed back unchanged, to match answers to inputs")
    data: Any = Field(..., description="the input; numbers/lists in JSON, arrays in msgpack")


class EncodeResult(BaseModel):
    id: Any = Field(None, description="the input's id")
    result: Any = Field(..., description="what predict returned for it (arrays as lists in JSON)")


class TaskAccepted(BaseModel):
    id: Any = Field(None, description="the input's id")
    task_id: str = Field(..., description="Celery task id: GET/DELETE /tasks/{task_id}")


class ErrorDetail(BaseModel):
    type: str = Field(..., description="error class, e.g. InvalidInput, PredictError")
    message: str
    status: int


class ErrorBody(BaseModel):
    error: ErrorDetail


class TaskState(BaseModel):
    task_id: str
    status: str = Field(..., description="PENDING (queued or unknown), SUCCESS, FAILURE, "
                        "REVOKED: Celery's states")
    result: Any = Field(None, description="the result, when status is SUCCESS")
    error: ErrorDetail | None = Field(None, description="why, when FAILURE or REVOKED")
    date_done: str | None = None


class Revoked(BaseModel):
    task_id: str
    status: Literal["REVOKED"]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    broker: bool = Field(..., description="the broker Redis answered")
    workers: int = Field(..., description="workers with a fresh heartbeat")
    reason: str = ""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ServerStatus(_Open):
    name: str
    config: dict[str, Any] = Field(..., description="the service's info: protocol, limits…")
    protocol: str
    batch_size: int
    num_workers_alive: int
    devices: list[int]
    workers: list[dict[str, Any]] = Field(..., description="each live worker's heartbeat")
    queue_length: int
    totals: dict[str, Any]
    scaling: dict[str, Any] = Field(
        default_factory=dict, description="elastic workers (-num_worker_max): workers, floor, "
        "ceiling, estimated wait, the last decision and its reason; empty when fixed")
    uptime_s: float = Field(..., description="seconds since the oldest live worker started")
    api_uptime_s: float
    versions: dict[str, Any]


class ClientStatus(_Open):
    pid: int = Field(..., description="this API process (one of -http_workers)")
    client_id: str | None
    service: str
    broker: str
    results: str
    pending: int = Field(..., description="POST /encode inputs waiting for a result")
    tasks_revocable: int = Field(..., description="POST /tasks submissions still revocable here")
    api_key_required: bool
    max_body: int
    uptime_s: float
    requests: dict[str, float] = Field(..., description="HTTP requests by route and outcome")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a body of one ``model`` or a list, in JSON or msgpack."""
    one = model.model_json_schema()
    schema = {"oneOf": [one, {"type": "array", "items": one}]}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/msgpack": {"schema": schema},
    }}}
