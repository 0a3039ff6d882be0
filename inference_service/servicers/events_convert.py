"""Domain events -> millm.v1 `Event` messages."""

from __future__ import annotations

from google.protobuf.message import Message

from inference_service.events import Event, Resync, ResyncReason
from inference_service.host import ModelStateChanged
from inference_service.operations.manager import OperationFinished
from inference_service.profiles import ProfileChange, ProfileChanged
from inference_service.sae.events import SaeAttached, SaeDetached
from inference_service.servicers import (
    inference_convert,
    operations_convert,
    steering_convert,
    training_convert,
)
from inference_service.steering.state import SteeringChanged, SteeringSource
from inference_service.training.manager import TrainingRunChanged
from millm.v1 import event_service_pb2 as pb
from millm.v1 import training_pb2

_RESYNC_REASONS = {
    ResyncReason.CURSOR_TOO_OLD: pb.RESYNC_REASON_CURSOR_TOO_OLD,
    ResyncReason.SUBSCRIBER_LAGGED: pb.RESYNC_REASON_SUBSCRIBER_LAGGED,
}
_STEERING_SOURCES = {
    SteeringSource.GLOBAL: pb.STEERING_SOURCE_GLOBAL,
    SteeringSource.PROFILE: pb.STEERING_SOURCE_PROFILE,
    SteeringSource.SAE: pb.STEERING_SOURCE_SAE,
}
_PROFILE_CHANGES = {
    ProfileChange.CREATED: pb.PROFILE_CHANGE_CREATED,
    ProfileChange.UPDATED: pb.PROFILE_CHANGE_UPDATED,
    ProfileChange.DELETED: pb.PROFILE_CHANGE_DELETED,
    ProfileChange.ACTIVATED: pb.PROFILE_CHANGE_ACTIVATED,
    ProfileChange.DEACTIVATED: pb.PROFILE_CHANGE_DEACTIVATED,
}


def event_message(event: Event) -> pb.Event:
    """The message of `event`; a payload this module does not know is a programming error."""
    field, payload = _payload(event.payload)
    return pb.Event(
        sequence=event.sequence,
        occurred_at_unix_ms=event.occurred_at_unix_ms,
        **{field: payload},  # type: ignore[arg-type]
    )


def _payload(payload: object) -> tuple[str, Message]:
    """The `Event.payload` oneof member for `payload`: its field name and message."""
    match payload:
        case Resync():
            return "resync", pb.Resync(reason=_RESYNC_REASONS[payload.reason])
        case ModelStateChanged():
            return "model_state_changed", pb.ModelStateChanged(
                state=inference_convert.MODEL_STATES[payload.state],
                model_id=payload.model_id,
                error=payload.error,
            )
        case SaeAttached():
            return "sae_attached", pb.SaeAttached(
                sae_id=payload.sae_id,
                sae_name=payload.sae_name,
                hook_name=payload.hook_name,
                model_id=payload.model_id,
            )
        case SaeDetached():
            return "sae_detached", pb.SaeDetached(
                sae_id=payload.sae_id,
                hook_name=payload.hook_name,
                model_id=payload.model_id,
                with_model=payload.with_model,
            )
        case SteeringChanged():
            return "steering_changed", pb.SteeringChanged(
                source=_STEERING_SOURCES[payload.source],
                live=steering_convert.steering_set_message(payload.live),
                active_profile=payload.active_profile,
                effective=steering_convert.steering_set_message(payload.effective),
            )
        case ProfileChanged():
            return "profile_changed", pb.ProfileChanged(
                name=payload.name, change=_PROFILE_CHANGES[payload.change]
            )
        case TrainingRunChanged():
            deleted = payload.state is None
            return "training_run_changed", pb.TrainingRunChanged(
                run_id=payload.run_id,
                state=training_pb2.TRAINING_STATE_UNSPECIFIED
                if payload.state is None
                else training_convert.STATES[payload.state],
                deleted=deleted,
            )
        case OperationFinished():
            return "operation_finished", pb.OperationFinished(
                operation=operations_convert.operation(payload.operation)
            )
    raise TypeError(f"no message for the event payload {type(payload).__name__}")
