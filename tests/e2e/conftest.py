"""Runs both processes as subprocesses, the way `make run` does, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.fixtures.local_hub import LocalHub

STARTUP_TIMEOUT_S = 240


@dataclass
class Stack:
    http_url: str
    grpc_address: str
    max_queue: int
    hub: LocalHub


def _wait_healthy(url: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode} during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the stack at {url} did not become healthy in {STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def local_hub():
    with LocalHub() as hub:
        yield hub


@pytest.fixture(scope="session")
def stack(data_dir, tmp_path_factory, local_hub):
    grpc_port, http_port = free_port(), free_port()
    max_queue = 9
    env = {
        **os.environ,
        "MILLM_DATA_DIR": str(data_dir),
        "MILLM_GRPC_PORT": str(grpc_port),
        "MILLM_HTTP_PORT": str(http_port),
        "MILLM_INFERENCE_ADDRESS": f"127.0.0.1:{grpc_port}",
        "MILLM_MAX_QUEUE": str(max_queue),
        # A stalled monitoring subscriber fills this quickly, so drops can be seen.
        "MILLM_MONITOR_QUEUE_FRAMES": "2",
        # A subscriber stalled on purpose answers no pings; on a slow CI machine the
        # default keepalive would close it before the test reads what it lost.
        "MILLM_WS_PING_TIMEOUT_S": "600",
        "MILLM_HF_ENDPOINT": local_hub.url,
        # Records of this run stay out of the shared data directory's database.
        "MILLM_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('db') / 'millm.db'}",
    }
    logs = tmp_path_factory.mktemp("stack-logs")
    processes = []
    for module in ("inference_service", "openai_bridge"):
        log = open(logs / f"{module}.log", "w")  # noqa: SIM115 - closed with the process
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_healthy(url, processes)
        yield Stack(url, f"127.0.0.1:{grpc_port}", max_queue, local_hub)
    except Exception:
        for name in ("inference_service", "openai_bridge"):
            sys.stderr.write((logs / f"{name}.log").read_text()[-4000:])
        raise
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
