"""Folder uploads with the real huggingface_hub client against the local Hub, read back with it."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from inference_service.errors import PermissionDeniedError
from inference_service.hub.upload import UploadResult, upload_folder
from tests.fixtures.local_hub import LocalHub, git_blob_sha1

REPO = "acme/sae-upload"
TOKEN = "hf_upload_secret_4f1c9"
CONFIG = b'{"architecture": "standard", "d_in": 16, "d_sae": 64}'
NOTES = b"trained on 1M tokens\n"
WEIGHTS = os.urandom(300_000)  # over the local Hub's LFS threshold: batch, PUT, verify
FOLDER = {"cfg.json": CONFIG, "notes.txt": NOTES, "sae_weights.safetensors": WEIGHTS}
FOLDER_BYTES = sum(len(content) for content in FOLDER.values())

# huggingface_hub 2.4 PUTs LFS objects with httpx2's deprecated `data=<file>`.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    # hf_xet is installed, and with it huggingface_hub 2.4 uploads through Xet storage, which
    # the local Hub does not speak. The flag is read when uploading, so patching it is enough.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub() as running:
        yield running


def _write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def sae_folder(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "sae", FOLDER)


def _upload(hub: LocalHub, folder: Path, events: list | None = None, **kwargs) -> UploadResult:
    args = {
        "folder": folder,
        "repo_id": REPO,
        "path_in_repo": "layer_3",
        "token": TOKEN,
        "private": True,
        "endpoint": hub.url,
        "commit_message": "Upload SAE",
        "progress": (lambda *e: events.append(e)) if events is not None else (lambda *e: None),
    }
    return upload_folder(**{**args, **kwargs})


def _download(hub: LocalHub, filename: str, cache: Path, **kwargs) -> bytes:
    path = hf_hub_download(REPO, filename, endpoint=hub.url, token=TOKEN, cache_dir=cache, **kwargs)
    return Path(path).read_bytes()


def test_uploaded_files_download_byte_identical(hub: LocalHub, sae_folder: Path, tmp_path: Path):
    result = _upload(hub, sae_folder)

    assert result.commit_sha == hub.commit(REPO)
    assert result.url == f"{hub.url}/{REPO}/commit/{result.commit_sha}"
    assert (result.repo_id, result.path_in_repo) == (REPO, "layer_3")
    assert result.uploaded_bytes == FOLDER_BYTES
    for name, content in FOLDER.items():
        assert _download(hub, f"layer_3/{name}", tmp_path / "cache") == content
    # The weights went through LFS; the small files went inline in the commit.
    writes = [
        (r.method, re.sub(r"^/lfs-uploads/.+", "/lfs-uploads/<ticket>", r.path), r.status)
        for r in hub.requests
    ]
    assert writes[:6] == [
        ("POST", "/api/repos/create", 200),
        ("POST", f"/api/models/{REPO}/preupload/main", 200),
        ("POST", f"/{REPO}.git/info/lfs/objects/batch", 200),
        ("PUT", "/lfs-uploads/<ticket>", 200),
        ("POST", f"/{REPO}.git/info/lfs/objects/verify", 200),
        ("POST", f"/api/models/{REPO}/commit/main", 200),
    ]
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True, token=TOKEN)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert info.sha == result.commit_sha
    assert siblings["layer_3/cfg.json"].blob_id == git_blob_sha1(CONFIG)
    assert siblings["layer_3/cfg.json"].lfs is None
    weights = siblings["layer_3/sae_weights.safetensors"]
    assert weights.size == len(WEIGHTS)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()


def test_second_upload_keeps_the_first_files(hub: LocalHub, sae_folder: Path, tmp_path: Path):
    first = _upload(hub, sae_folder)
    more = {"cfg.json": b'{"d_in": 32}', "sae_weights.safetensors": os.urandom(200_000)}
    second = _upload(hub, _write_folder(tmp_path / "layer_4", more), path_in_repo="layer_4")

    assert second.commit_sha != first.commit_sha
    snapshot = Path(
        snapshot_download(REPO, endpoint=hub.url, token=TOKEN, local_dir=tmp_path / "snapshot")
    )
    expected = {f"layer_3/{n}": c for n, c in FOLDER.items()}
    expected |= {f"layer_4/{n}": c for n, c in more.items()}
    for name, content in expected.items():
        assert (snapshot / name).read_bytes() == content
    api = HfApi(endpoint=hub.url)
    assert sorted(api.list_repo_files(REPO, token=TOKEN)) == sorted(expected)
    # The first commit is still there, as it was.
    assert sorted(api.list_repo_files(REPO, revision=first.commit_sha, token=TOKEN)) == [
        f"layer_3/{name}" for name in sorted(FOLDER)
    ]


def test_reupload_commits_only_what_changed(hub: LocalHub, sae_folder: Path, tmp_path: Path):
    first = _upload(hub, sae_folder)
    # Nothing changed: the client compares the oids from preupload and makes no commit.
    assert _upload(hub, sae_folder).commit_sha == first.commit_sha

    (sae_folder / "notes.txt").write_bytes(b"retrained\n")
    hub.clear_requests()
    changed = _upload(hub, sae_folder)

    assert changed.commit_sha != first.commit_sha
    assert _download(hub, "layer_3/notes.txt", tmp_path / "cache") == b"retrained\n"
    assert not [r for r in hub.requests if r.method == "PUT"]  # the weights were on the Hub


def test_deletions_make_a_new_revision(hub: LocalHub, sae_folder: Path):
    _upload(hub, sae_folder)
    _upload(hub, sae_folder, path_in_repo="layer_4")
    api = HfApi(endpoint=hub.url)

    api.delete_file("layer_3/notes.txt", REPO, token=TOKEN)
    api.delete_folder("layer_4", REPO, token=TOKEN)

    assert sorted(api.list_repo_files(REPO, token=TOKEN)) == [
        "layer_3/cfg.json",
        "layer_3/sae_weights.safetensors",
    ]


def test_progress_reports_the_folder_size(hub: LocalHub, sae_folder: Path):
    # upload_folder leaves out huggingface_hub's own download metadata; so does the total.
    _write_folder(sae_folder, {".cache/huggingface/download/cfg.json.metadata": b"x" * 100})
    events: list[tuple[str, int, int]] = []
    _upload(hub, sae_folder, events)

    assert events == [
        ("creating_repo", 0, FOLDER_BYTES),
        ("uploading", 0, FOLDER_BYTES),
        ("done", FOLDER_BYTES, FOLDER_BYTES),
    ]
    assert sorted(hub.files(REPO)) == [f"layer_3/{name}" for name in sorted(FOLDER)]


def test_upload_without_a_token_says_how_to_give_one(hub: LocalHub, sae_folder: Path):
    with pytest.raises(PermissionDeniedError) as caught:
        _upload(hub, sae_folder, token=None)

    assert caught.value.message == (
        "Uploading to 'acme/sae-upload' needs a Hub token with write access: pass a token with "
        "the request or set HF_TOKEN for the inference service."
    )
    assert caught.value.param == "token"
    assert hub.requests == []


def test_anonymous_writes_get_401(hub: LocalHub):
    with pytest.raises(HfHubHTTPError) as caught:
        HfApi(endpoint=hub.url).create_repo(REPO, token=False)
    assert caught.value.response.status_code == 401


@pytest.mark.parametrize(
    ("repo_id", "token"),
    [
        (REPO, "hf_unknown"),  # a token the Hub rejects: 401
        ("acme/theirs", "hf_other"),  # a valid token on someone else's repo: 403
    ],
)
def test_a_token_that_may_not_write_is_a_permission_error(
    hub: LocalHub, sae_folder: Path, repo_id: str, token: str
):
    hub.write_tokens = frozenset({TOKEN, "hf_other"})
    hub.add_repo("acme/theirs", {"cfg.json": CONFIG}, token=TOKEN)

    with pytest.raises(PermissionDeniedError) as caught:
        _upload(hub, sae_folder, repo_id=repo_id, token=token, private=False)

    assert caught.value.message == (
        f"The Hub did not let this token write to '{repo_id}': pass a token with write access "
        "to it, or set HF_TOKEN for the inference service."
    )
    assert hub.files("acme/theirs").keys() == {"cfg.json"}


def test_the_request_log_never_holds_the_token(hub: LocalHub, sae_folder: Path, tmp_path: Path):
    _upload(hub, sae_folder)
    _download(hub, "layer_3/sae_weights.safetensors", tmp_path / "cache")

    assert TOKEN not in repr(hub.requests)
    # Every request carried it, except the PUT to the upload URL (like S3's presigned ones).
    assert {r.method for r in hub.requests if not r.authorization} == {"PUT"}
