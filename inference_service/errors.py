"""Domain errors: each carries its gRPC status code and machine-readable reason.

This is the service half of the one error table; `interceptors.py` turns these
into gRPC statuses with a `google.rpc.ErrorInfo` detail, and the bridge maps
those to HTTP. Reasons are the `millm.v1.ErrorReason` names without prefix.
"""

from __future__ import annotations

import grpc

ERROR_DOMAIN = "millm.v1"


class MillmError(Exception):
    """Base of every error the service reports to callers on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def metadata(self) -> dict[str, str]:
        """The ErrorInfo metadata: only keys that are set."""
        out: dict[str, str] = {}
        if self.param is not None:
            out["param"] = self.param
        if self.retry_after_s is not None:
            out["retry_after_s"] = str(self.retry_after_s)
        return out


class InvalidArgumentError(MillmError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class ContextLengthExceededError(MillmError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "CONTEXT_LENGTH_EXCEEDED"


class UnsupportedError(MillmError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "UNSUPPORTED"


class ModelNotFoundError(MillmError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "MODEL_NOT_FOUND"


class QueueFullError(MillmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"


class OutOfMemoryError(MillmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OUT_OF_MEMORY"


class ModelLoadingError(MillmError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "MODEL_LOADING"


class NoModelLoadedError(MillmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_MODEL_LOADED"


class UnauthenticatedError(MillmError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class NotFoundError(MillmError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class PermissionDeniedError(MillmError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class UnavailableError(MillmError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class ModelInUseError(MillmError):
    """An action conflicts with the model being served (for example deleting it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "MODEL_IN_USE"


class CorruptedFileError(MillmError):
    code = grpc.StatusCode.DATA_LOSS
    reason = "CORRUPTED_FILE"


class CancelledError(MillmError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class UnimplementedError(MillmError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNSUPPORTED"


class IncompatibleSaeError(MillmError):
    """The SAE is valid but does not fit the loaded model; fixed by another SAE or model."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "INCOMPATIBLE_SAE"


class LayerOutOfRangeError(MillmError):
    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "LAYER_OUT_OF_RANGE"


class SaeInUseError(MillmError):
    """An action conflicts with the SAE being attached (for example deleting it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "SAE_IN_USE"


class SaeAlreadyAttachedError(MillmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "SAE_ALREADY_ATTACHED"


class NoSaeAttachedError(MillmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_SAE_ATTACHED"


class ProfileNotFoundError(MillmError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "PROFILE_NOT_FOUND"


class AlreadyExistsError(MillmError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class TrainingBusyError(MillmError):
    """A run is training: a second cannot start, and a training run cannot be deleted."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "TRAINING_BUSY"
