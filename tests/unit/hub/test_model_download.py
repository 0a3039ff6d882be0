"""The model downloader against the local Hub, with the real huggingface_hub client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference_service.errors import (
    CorruptedFileError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from inference_service.hub.fetch import TransferCancelled
from inference_service.hub.model_download import download_model, repo_dir
from tests.conftest import REPO_ROOT, free_port
from tests.fixtures.local_hub import LocalHub

REPO = "acme/tiny-model"
WEIGHTS = os.urandom(300_000)
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}',
    "model.safetensors": WEIGHTS,
    "pytorch_model.bin": os.urandom(1000),
    "model.gguf": os.urandom(1000),
}


@pytest.fixture
def hub():
    with LocalHub() as running:
        running.add_repo(REPO, FILES)
        yield running


def _download(hub: LocalHub, cache: Path, events: list | None = None, **kwargs):
    args = {
        "repo_id": REPO,
        "revision": "main",
        "token": None,
        "wanted_format": None,
        "cache_root": cache,
        "endpoint": hub.url,
        "progress": (lambda *e: events.append(e)) if events is not None else (lambda *e: None),
        "is_cancelled": lambda: False,
    }
    return download_model(**{**args, **kwargs})


def _file_gets(hub: LocalHub, name: str):
    return [r for r in hub.requests if r.method == "GET" and r.filename == name]


def _resumed_get(hub: LocalHub, name: str, offset: int):
    # Found by its Range, not its place in the log: a throttled request that the
    # client abandoned is logged only when its server thread notices, maybe later.
    matches = [r for r in _file_gets(hub, name) if r.range == f"bytes={offset}-"]
    assert len(matches) == 1, _file_gets(hub, name)
    return matches[0]


def test_downloads_safetensors_and_configs_only_with_monotonic_progress(hub, tmp_path):
    events: list[tuple[str, int, int]] = []
    result = _download(hub, tmp_path, events)
    assert result.format == "safetensors"
    assert sorted(f.path for f in result.files) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (result.local_dir / "model.safetensors").read_bytes() == WEIGHTS
    assert result.local_dir == repo_dir(tmp_path, REPO, hub.commit(REPO))
    done = [d for stage, d, _ in events if stage == "downloading"]
    assert done == sorted(done)
    assert events[-1] == ("done", result.size_bytes, result.size_bytes)
    assert events[0][0] == "resolving"


def test_pytorch_weights_when_asked(hub, tmp_path):
    result = _download(hub, tmp_path, wanted_format="pytorch")
    assert "pytorch_model.bin" in [f.path for f in result.files]
    assert "model.safetensors" not in [f.path for f in result.files]


def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path):
    hub.drop_after("model.safetensors", 100_000)
    result = _download(hub, tmp_path)
    assert (result.local_dir / "model.safetensors").read_bytes() == WEIGHTS
    gets = _file_gets(hub, "model.safetensors")
    assert len(gets) == 2
    # httpx hands over whole chunks only, so the resume starts at the last full
    # chunk written before the drop, and fetches just the rest.
    offset = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 100_000
    assert gets[1].bytes_sent == len(WEIGHTS) - offset


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes(hub, tmp_path):
    hub.slow("model.safetensors", 200_000)
    started = time.monotonic()
    with pytest.raises(TransferCancelled):
        _download(hub, tmp_path, is_cancelled=lambda: time.monotonic() - started > 0.6)
    part = repo_dir(tmp_path, REPO, hub.commit(REPO)) / "model.safetensors.part"
    kept = part.stat().st_size
    assert 0 < kept < len(WEIGHTS)
    hub.reset_faults()
    result = _download(hub, tmp_path)
    assert (result.local_dir / "model.safetensors").read_bytes() == WEIGHTS
    assert _resumed_get(hub, "model.safetensors", kept).bytes_sent == len(WEIGHTS) - kept


_KILLED_DOWNLOAD = """
import sys, time
from pathlib import Path
from inference_service.hub.model_download import download_model
download_model(repo_id=sys.argv[1], revision="main", token=None, wanted_format=None,
    cache_root=Path(sys.argv[2]), endpoint=sys.argv[3],
    progress=lambda stage, done, total: print(stage, done, flush=True), is_cancelled=lambda: False)
"""


def test_download_killed_with_sigkill_resumes_in_a_new_process(hub, tmp_path):
    # Slow enough that the transfer is still under way when the kill lands, even on
    # a loaded machine that reads the child's progress late.
    hub.slow("model.safetensors", 40_000)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_DOWNLOAD, REPO, str(tmp_path), hub.url],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        stage, done = line.split()
        if stage == "downloading" and int(done) > 60_000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    part = repo_dir(tmp_path, REPO, hub.commit(REPO)) / "model.safetensors.part"
    kept = part.stat().st_size
    assert 0 < kept < len(WEIGHTS)
    hub.reset_faults()
    result = _download(hub, tmp_path)
    assert (result.local_dir / "model.safetensors").read_bytes() == WEIGHTS
    assert _resumed_get(hub, "model.safetensors", kept).bytes_sent == len(WEIGHTS) - kept


def test_corrupted_file_is_reported_and_removed(hub, tmp_path):
    hub.corrupt("model.safetensors")
    with pytest.raises(CorruptedFileError) as caught:
        _download(hub, tmp_path)
    assert "model.safetensors" in caught.value.message
    assert not (repo_dir(tmp_path, REPO, hub.commit(REPO)) / "model.safetensors").exists()


def test_private_repo_needs_a_token(hub, tmp_path):
    hub.add_repo(
        "acme/secret",
        {"config.json": b"{}", "model.safetensors": WEIGHTS},
        private=True,
        token="hf_good",
    )
    with pytest.raises(PermissionDeniedError) as caught:
        _download(hub, tmp_path, repo_id="acme/secret")
    assert "token" in caught.value.message
    result = _download(hub, tmp_path, repo_id="acme/secret", token="hf_good")
    assert (result.local_dir / "model.safetensors").read_bytes() == WEIGHTS


def test_unknown_repo_is_not_found(hub, tmp_path):
    with pytest.raises(NotFoundError) as caught:
        _download(hub, tmp_path, repo_id="acme/nothing-here", token="hf_any")
    assert "acme/nothing-here" in caught.value.message
    # Anonymous: the Hub cannot say whether it is missing or private.
    with pytest.raises(PermissionDeniedError) as anonymous:
        _download(hub, tmp_path, repo_id="acme/nothing-here")
    assert "not found, or it is private" in anonymous.value.message


def test_unreachable_hub_is_unavailable_with_what_to_do(hub, tmp_path):
    with pytest.raises(UnavailableError) as caught:
        _download(hub, tmp_path, endpoint=f"http://127.0.0.1:{free_port()}")
    assert "could not be reached" in caught.value.message
    assert "MILLM_HF_ENDPOINT" in caught.value.message
