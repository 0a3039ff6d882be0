"""The LocalHub fixture, exercised with the real `huggingface_hub` client.

These tests also pin down the client behaviours miLLM relies on (huggingface_hub 2.x):
in-call resume with ``Range`` after a dropped connection, deletion of the partial file
when a download fails, and the exception classes raised for 401/403/404 answers.
"""

from __future__ import annotations

import glob
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from tqdm import tqdm

from tests.fixtures.local_hub import LocalHub, build_model_repo_files, git_blob_sha1

REPO = "acme/tiny-model"
CONFIG = b'{"model_type": "llama", "hidden_size": 8}\n'
WEIGHTS = bytes(range(256)) * 64  # 16 KiB, LFS by suffix and size
TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}' * 40  # ~1.8 KiB, LFS by size
NESTED = b"nested file\n"
# huggingface_hub reads bodies in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces: it can only resume
# from a chunk boundary it has received, so resume tests need a file over 10 MiB.
CHUNK = 10 * 1024 * 1024
BIG = hashlib.sha256(b"big").digest() * ((CHUNK + 1024 * 1024) // 32)  # 11 MiB
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as local_hub:
        local_hub.add_repo(
            REPO,
            {
                "config.json": CONFIG,
                "model.safetensors": WEIGHTS,
                "tokenizer.json": TOKENIZER,
                "sub/dir/notes.txt": NESTED,
            },
        )
        local_hub.add_repo(
            "acme/big",
            {"config.json": CONFIG, "model.safetensors": BIG},
        )
        yield local_hub


def _download(
    hub: LocalHub, tmp_path: Path, filename: str, repo_id: str = REPO, **kwargs: Any
) -> Path:
    return Path(
        hf_hub_download(
            repo_id, filename, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False, **kwargs
        )
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hf_hub_download_small_and_lfs_file(hub: LocalHub, tmp_path: Path) -> None:
    config = _download(hub, tmp_path, "config.json")
    weights = _download(hub, tmp_path, "model.safetensors")

    assert config.read_bytes() == CONFIG
    assert weights.read_bytes() == WEIGHTS
    # Cache layout: snapshots/<commit>/<file> -> blobs/<etag>;
    # etag = git sha1 (regular file) or sha256 (LFS file).
    commit = hub.commit(REPO)
    assert config.parent.name == commit
    assert config.resolve().name == git_blob_sha1(CONFIG)
    assert weights.resolve().name == hashlib.sha256(WEIGHTS).hexdigest()
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [(r.status, r.bytes_sent, r.range) for r in gets] == [
        (200, len(CONFIG), None),
        (200, len(WEIGHTS), None),
    ]


def test_get_hf_file_metadata(hub: LocalHub) -> None:
    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub.url)
    meta = get_hf_file_metadata(url, token=False)
    assert meta.commit_hash == hub.commit(REPO)
    assert meta.etag == hashlib.sha256(WEIGHTS).hexdigest()
    assert meta.size == len(WEIGHTS)

    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.url), token=False)
    assert meta.etag == git_blob_sha1(CONFIG)
    assert meta.size == len(CONFIG)


def test_snapshot_download(hub: LocalHub, tmp_path: Path) -> None:
    folder = Path(
        snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False)
    )
    assert folder.name == hub.commit(REPO)
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "tokenizer.json").read_bytes() == TOKENIZER
    assert (folder / "sub/dir/notes.txt").read_bytes() == NESTED

    local = Path(
        snapshot_download(REPO, endpoint=hub.url, local_dir=tmp_path / "local", token=False)
    )
    assert (local / "model.safetensors").read_bytes() == WEIGHTS


def test_model_info_files_metadata(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(REPO, files_metadata=True)
    assert info.id == REPO
    assert info.sha == hub.commit(REPO)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sub/dir/notes.txt",
    }
    weights = siblings["model.safetensors"]
    assert weights.size == len(WEIGHTS)
    assert weights.lfs is not None and weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)

    plain = api.model_info(REPO, revision="main")
    assert plain.sha == info.sha
    assert all(s.size is None for s in plain.siblings or [])


def test_list_repo_tree_and_paths_info(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    entries = list(api.list_repo_tree(REPO, recursive=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert folders == {"sub", "sub/dir"}
    assert files["model.safetensors"].lfs is not None
    assert files["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert files["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert sorted(api.list_repo_files(REPO)) == sorted(files)

    top = {e.path for e in api.list_repo_tree(REPO)}
    assert top == {"config.json", "model.safetensors", "tokenizer.json", "sub"}
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub/dir")] == [
        "sub/dir/notes.txt"
    ]

    infos = api.get_paths_info(REPO, ["config.json", "sub", "missing.txt"])
    assert {type(i).__name__: i.path for i in infos} == {
        "RepoFile": "config.json",
        "RepoFolder": "sub",
    }


class _RecordingTqdm(tqdm):  # type: ignore[type-arg]
    instances: ClassVar[list[_RecordingTqdm]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        self.seen_total = kwargs.get("total")
        self.received = kwargs.get("initial", 0)
        _RecordingTqdm.instances.append(self)

    def update(self, n: float | None = 1) -> bool | None:
        self.received += n or 0
        return super().update(n)


def test_progress_reaches_total(hub: LocalHub, tmp_path: Path) -> None:
    _RecordingTqdm.instances.clear()
    _download(hub, tmp_path, "model.safetensors", tqdm_class=_RecordingTqdm)
    [bar] = _RecordingTqdm.instances
    assert bar.seen_total == len(WEIGHTS)
    assert bar.received == len(WEIGHTS)


def test_drop_is_resumed_within_the_call_with_a_range_request(
    hub: LocalHub, tmp_path: Path
) -> None:
    hub.drop_after("model.safetensors", CHUNK + 5000)
    path = _download(hub, tmp_path, "model.safetensors", repo_id="acme/big")
    assert path.read_bytes() == BIG
    gets = hub.downloads("model.safetensors")
    # Resume starts at the last complete 10 MiB chunk, not at the drop offset.
    assert [(r.status, r.range, r.bytes_sent) for r in gets] == [
        (200, None, CHUNK + 5000),
        (206, f"bytes={CHUNK}-", len(BIG) - CHUNK),
    ]


def test_drop_inside_the_first_chunk_restarts_from_zero(hub: LocalHub, tmp_path: Path) -> None:
    hub.drop_after("model.safetensors", 3000)
    assert _download(hub, tmp_path, "model.safetensors").read_bytes() == WEIGHTS
    gets = hub.downloads("model.safetensors")
    assert [(r.status, r.range, r.bytes_sent) for r in gets] == [
        (200, None, 3000),
        (200, None, len(WEIGHTS)),
    ]


def test_failed_download_leaves_no_partial_file(hub: LocalHub, tmp_path: Path) -> None:
    # First GET drops after 10 MiB + 5000 bytes; the resume GET gets a 500 (which is not retried).
    hub.drop_after("model.safetensors", CHUNK + 5000)
    hub.fail_next("model.safetensors", 500, method="GET", skip=1)
    with pytest.raises(HfHubHTTPError) as excinfo:
        _download(hub, tmp_path, "model.safetensors", repo_id="acme/big")
    assert excinfo.value.response.status_code == 500
    gets = hub.downloads("model.safetensors")
    assert [(r.status, r.range) for r in gets] == [(200, None), (500, f"bytes={CHUNK}-")]
    cache = tmp_path / "cache"
    assert glob.glob(f"{cache}/**/*.incomplete", recursive=True) == []
    assert list((cache / "models--acme--big" / "blobs").iterdir()) == []

    # The next call starts from scratch (no cross-call resume in huggingface_hub >= 1.18).
    hub.clear_requests()
    assert _download(hub, tmp_path, "model.safetensors", repo_id="acme/big").read_bytes() == BIG
    assert [(r.status, r.range) for r in hub.downloads("model.safetensors")] == [(200, None)]


def test_head_error_is_retried_when_nothing_is_cached(hub: LocalHub, tmp_path: Path) -> None:
    hub.fail_next("config.json", 503, method="HEAD")
    assert _download(hub, tmp_path, "config.json").read_bytes() == CONFIG
    heads = [r.status for r in hub.requests if r.method == "HEAD"]
    assert heads[0] == 503 and heads[-1] == 200


def test_private_repo_requires_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_repo("acme/private", {"config.json": CONFIG}, private=True, token="hf_secret")
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        _download(hub, tmp_path, "config.json", repo_id="acme/private")
    assert excinfo.value.response.status_code == 401
    assert not isinstance(excinfo.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("acme/private")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(
            "acme/private", endpoint=hub.url, cache_dir=tmp_path / "snap", token=False
        )
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        _download(
            hub,
            tmp_path,
            "config.json",
            repo_id="acme/private",
            headers={"Authorization": "Bearer nope"},
        )
    assert excinfo.value.response.status_code == 404

    path = hf_hub_download(
        "acme/private",
        "config.json",
        endpoint=hub.url,
        cache_dir=tmp_path / "cache",
        token="hf_secret",
    )
    assert Path(path).read_bytes() == CONFIG
    assert HfApi(endpoint=hub.url, token="hf_secret").model_info("acme/private").private is True


def test_gated_repo(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_repo("acme/gated", {"config.json": CONFIG}, gated=True, token="hf_ok")
    with pytest.raises(GatedRepoError):
        _download(hub, tmp_path, "config.json", repo_id="acme/gated")
    assert HfApi(endpoint=hub.url, token=False).model_info("acme/gated").gated == "auto"
    assert _download(
        hub,
        tmp_path,
        "config.json",
        repo_id="acme/gated",
        headers={"Authorization": "Bearer hf_ok"},
    )


def test_unknown_repo_file_and_revision(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        _download(hub, tmp_path, "config.json", repo_id="acme/nope")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("acme/nope")

    with pytest.raises(RemoteEntryNotFoundError) as excinfo:
        _download(hub, tmp_path, "missing.bin")
    assert isinstance(excinfo.value, EntryNotFoundError)
    # The 404 carries X-Repo-Commit, so the client caches the miss under .no_exist/<commit>/.
    no_exist = (
        tmp_path
        / "cache"
        / "models--acme--tiny-model"
        / ".no_exist"
        / hub.commit(REPO)
        / "missing.bin"
    )
    assert no_exist.exists()

    with pytest.raises(RevisionNotFoundError):
        _download(hub, tmp_path, "config.json", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="v9")


def test_corrupt_keeps_size_but_changes_sha256(hub: LocalHub, tmp_path: Path) -> None:
    hub.corrupt("model.safetensors")
    path = _download(hub, tmp_path, "model.safetensors")
    info = HfApi(endpoint=hub.url, token=False).model_info(REPO, files_metadata=True)
    [sibling] = [s for s in info.siblings or [] if s.rfilename == "model.safetensors"]
    assert sibling.lfs is not None
    assert path.stat().st_size == sibling.size == len(WEIGHTS)
    assert _sha256(path) != sibling.lfs.sha256
    # The client does not hash: the corrupt bytes land in the blob named after the expected sha256.
    assert path.resolve().name == sibling.lfs.sha256

    hub.reset_faults()
    fresh = _download(hub, tmp_path / "again", "model.safetensors")
    assert _sha256(fresh) == sibling.lfs.sha256


def test_slow_throttles(hub: LocalHub, tmp_path: Path) -> None:
    hub.slow("model.safetensors", 64 * 1024)  # 16 KiB at 64 KiB/s -> ~0.25 s
    started = time.monotonic()
    assert _download(hub, tmp_path, "model.safetensors").read_bytes() == WEIGHTS
    assert time.monotonic() - started >= 0.2


def test_range_requests_directly(hub: LocalHub) -> None:
    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub.url)
    with httpx.Client() as client:
        response = client.get(url, headers={"Range": "bytes=100-"})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        assert response.content == WEIGHTS[100:]
        response = client.get(url, headers={"Range": "bytes=10-19"})
        assert response.status_code == 206 and response.content == WEIGHTS[10:20]
        assert client.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416
        assert client.head(url).headers["X-Linked-Size"] == str(len(WEIGHTS))


def _converted_model_folder(data_dir: Path) -> Path:
    """The built-in model's safetensors copy, converted from the GGUF if not yet cached."""
    from inference_service.config import InferenceSettings
    from inference_service.engine.loader import resolve_source

    return Path(resolve_source(InferenceSettings(data_dir=data_dir))[1])


def test_build_model_repo_files_serves_real_model_folder(tmp_path: Path, data_dir: Path) -> None:
    folder = _converted_model_folder(data_dir)
    files = build_model_repo_files(folder)
    assert {"config.json", "model.safetensors"} <= set(files)
    with LocalHub() as hub:
        hub.add_repo("millm/builtin", files)
        weights = hub.file("millm/builtin", "model.safetensors")
        assert weights.is_lfs and weights.size == files["model.safetensors"].stat().st_size
        url = hf_hub_url("millm/builtin", "model.safetensors", endpoint=hub.url)
        meta = get_hf_file_metadata(url, token=False)
        assert meta.etag == weights.sha256 and meta.size == weights.size
        # Small files go through the real client; the weights only through a ranged read.
        folder_out = snapshot_download(
            "millm/builtin",
            endpoint=hub.url,
            cache_dir=tmp_path / "cache",
            token=False,
            ignore_patterns=["*.safetensors"],
        )
        assert (Path(folder_out) / "config.json").read_bytes() == files["config.json"].read_bytes()
        with httpx.Client() as client:
            head = client.get(url, headers={"Range": "bytes=0-7"}).content
        with files["model.safetensors"].open("rb") as fh:
            assert head == fh.read(8)
