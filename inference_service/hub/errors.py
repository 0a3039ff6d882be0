"""Hub failures as domain errors, so callers see what to do next."""

from __future__ import annotations

from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from inference_service.errors import (
    InvalidArgumentError,
    MillmError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)


def hub_error(exc: Exception, repo_id: str, revision: str) -> MillmError:
    """Maps a huggingface_hub exception for `repo_id` to a domain error."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        # The Hub answers 401 to anonymous requests for missing and private repos alike.
        return PermissionDeniedError(
            f"The repository '{repo_id}' was not found, or it is private or gated: pass a Hub "
            "token with the request or set HF_TOKEN for the inference service.",
            param="token",
        )
    if isinstance(exc, GatedRepoError) or status == 403:
        return PermissionDeniedError(
            f"The Hub token has no access to '{repo_id}' (private or gated); request access or "
            "use another token.",
            param="token",
        )
    if isinstance(exc, RevisionNotFoundError):
        return NotFoundError(
            f"The revision '{revision}' does not exist in '{repo_id}'.", param="revision"
        )
    if isinstance(exc, RepositoryNotFoundError | EntryNotFoundError) or status == 404:
        return NotFoundError(
            f"The repository '{repo_id}' does not exist on the Hub.", param="repo_id"
        )
    if isinstance(exc, HfHubHTTPError | OSError):
        return UnavailableError(
            f"The Hugging Face Hub could not be reached for '{repo_id}' ({exc}); retry later.",
            retry_after_s=10,
        )
    return InvalidArgumentError(str(exc))
