"""Hub failures as domain errors, so callers see what to do next."""

from __future__ import annotations

from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
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
    if isinstance(exc, HFValidationError):
        return InvalidArgumentError(str(exc), param="repo_id")
    # Anything else is transport trouble: huggingface_hub 2.x raises its own httpx
    # fork's errors, so they are not matched by type.
    return UnavailableError(
        f"The Hugging Face Hub could not be reached for '{repo_id}' ({exc}); check the "
        "network, or point MILLM_HF_ENDPOINT at a reachable Hub, then retry.",
        retry_after_s=10,
    )
