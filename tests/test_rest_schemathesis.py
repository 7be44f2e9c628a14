"""Schemathesis fuzzes every route of the REST API's OpenAPI schema: no server errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from .helpers import ROOT, free_port, wait_until


def test_fuzzing_the_openapi_schema_finds_no_server_error(make_service, tmp_path: Path) -> None:
    port = free_port()
    make_service("workers.echo.Worker", "-http_port", str(port), "-max_payload", "65536")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, what="the REST API to be ready")
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    out = subprocess.run(
        [st, "--config-file", str(ROOT / "tests" / "data" / "schemathesis.toml"), "run",
         f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
         "--request-timeout", "10", "--no-color", "--seed", "20261124"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Server error" not in out.stdout
