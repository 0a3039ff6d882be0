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


def _test_device() -> str:
    """MILLM_TEST_DEVICE: cpu, cuda, or auto (the default: cuda when available)."""
    choice = os.environ.get("MILLM_TEST_DEVICE", "auto").strip().lower() or "auto"
    if choice not in {"auto", "cpu", "cuda"}:
        raise pytest.UsageError(f"MILLM_TEST_DEVICE must be auto, cpu or cuda; got {choice!r}")
    if choice == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


# Every model the tests load, in process or in a stack's subprocess, goes to this
# device, in float32 (the references the tests compare against are float32).
TEST_DEVICE = _test_device()
os.environ["MILLM_DEVICE"] = TEST_DEVICE
os.environ.setdefault("MILLM_DTYPE", "float32")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shared by all test runs so the built-in model is converted from GGUF only once.
TEST_DATA_DIR = REPO_ROOT / ".cache" / "millm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def test_device() -> str:
    """The device the suite runs its models on ("cpu" or "cuda")."""
    return TEST_DEVICE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    TEST_DATA_DIR.mkdir(parents=True, exist_ok=True)
    return TEST_DATA_DIR
