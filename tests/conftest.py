"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.model"]

# Servers (in process and the stacks' subprocesses, which inherit this) serve no
# metrics port unless a test asks for one: many run at once, and the default
# port would be taken by the first or by a developer's own running stack.
os.environ["MILLM_METRICS_PORT"] = "0"

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shared by all test runs so the built-in model is converted from GGUF only once.
TEST_DATA_DIR = REPO_ROOT / ".cache" / "millm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    TEST_DATA_DIR.mkdir(parents=True, exist_ok=True)
    return TEST_DATA_DIR
