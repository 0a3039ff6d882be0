"""Runs both processes as subprocesses, the way `make run` does, on free ports."""

from __future__ import annotations

import openai
import pytest

from tests.fixtures.local_hub import LocalHub
from tests.fixtures.stack import launch_stack


@pytest.fixture(scope="session")
def local_hub():
    with LocalHub() as hub:
        yield hub


@pytest.fixture(scope="session")
def stack(data_dir, tmp_path_factory, local_hub):
    extra_env = {
        # A stalled monitoring subscriber fills this quickly, so drops can be seen.
        "MILLM_MONITOR_QUEUE_FRAMES": "2",
        # A subscriber stalled on purpose answers no pings; on a slow CI machine the
        # default keepalive would close it before the test reads what it lost.
        "MILLM_WS_PING_TIMEOUT_S": "600",
    }
    with launch_stack(
        data_dir,
        tmp_path_factory.mktemp("db") / "millm.db",
        tmp_path_factory.mktemp("stack-logs"),
        local_hub,
        extra_env=extra_env,
        max_queue=9,
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack):
    """The official SDK against the stack; no retries, so a refusal shows at once."""
    return openai.OpenAI(
        base_url=f"{stack.http_url}/v1", api_key="unused", max_retries=0, timeout=180
    )
