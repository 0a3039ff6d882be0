"""Pure translation for /api/v1/steering, /profiles and /monitoring: bodies -> millm.v1
messages, results -> JSON, with the conventions of `translate.py` (snake_case, lower-case
enums, null for "none")."""

from __future__ import annotations

import json
from typing import Any

from millm.v1 import monitoring_service_pb2 as monpb
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import steering_service_pb2 as stpb
from openai_bridge import steering_json
from openai_bridge.errors import invalid_request
from openai_bridge.management.schemas import (
    UINT32_MAX,
    MonitorControl,
    MonitoringConfigBody,
    ProfileCreateBody,
    ProfileUpdateBody,
    SteeringBody,
)
from openai_bridge.management.translate import page_size

# ---------------------------------------------------------------- steering


def set_steering_request(body: SteeringBody) -> stpb.SetSteeringRequest:
    request = stpb.SetSteeringRequest(features=steering_json.feature_messages(body.features))
    if body.enabled is not None:
        request.enabled = body.enabled
    return request


def steering_state(state: stpb.SteeringState) -> dict[str, Any]:
    return {
        "live": steering_json.steering_set(state.live),
        "active_profile": state.active_profile or None,
        "effective": steering_json.steering_set(state.effective),
        "sae_id": state.sae_id or None,
        "d_sae": state.d_sae or None,
        # JSON object keys are strings; by index, for a stable order.
        "max_activations": {
            str(i): state.max_activations[i] for i in sorted(state.max_activations)
        },
    }


# ---------------------------------------------------------------- profiles


def list_profiles_request(size: int | None, token: str | None) -> ppb.ListProfilesRequest:
    return ppb.ListProfilesRequest(page_size=page_size(size), page_token=token or "")


def create_profile_request(body: ProfileCreateBody) -> ppb.CreateProfileRequest:
    return ppb.CreateProfileRequest(
        name=body.name,
        description=body.description,
        features=steering_json.feature_messages(body.features or []),
    )


def update_profile_request(name: str, body: ProfileUpdateBody) -> ppb.UpdateProfileRequest:
    request = ppb.UpdateProfileRequest(name=name)
    if body.description is not None:
        request.description = body.description
    if body.features is not None:
        request.replace_features = True
        request.features.extend(steering_json.feature_messages(body.features))
    return request


def profile_sae(sae: ppb.ProfileSae) -> dict[str, Any]:
    return {
        "sae_id": sae.sae_id or None,
        "name": sae.name or None,
        "weights_sha256": sae.weights_sha256 or None,
        "hook_name": sae.hook_name or None,
        "d_sae": sae.d_sae or None,
    }


def profile(message: ppb.Profile) -> dict[str, Any]:
    return {
        "name": message.name,
        "description": message.description or None,
        "model": message.model or None,
        "sae": profile_sae(message.sae) if message.HasField("sae") else None,
        "features": [steering_json.feature(f) for f in message.features],
        "active": message.active,
        "created_at_unix_ms": message.created_at_unix_ms,
        "updated_at_unix_ms": message.updated_at_unix_ms,
    }


def import_result(response: ppb.ImportProfileResponse) -> dict[str, Any]:
    return {"profile": profile(response.profile), "mismatches": list(response.mismatches)}


def is_profile_document(value: Any) -> bool:
    """The exported document itself (it has a `schema` key), not the `{"json": ...}` wrapper."""
    return isinstance(value, dict) and "schema" in value


def profile_filename(name: str) -> str:
    return f"{name}.millm-profile.json"


# ---------------------------------------------------------------- monitoring


def monitoring_config(config: monpb.MonitoringConfig) -> dict[str, Any]:
    return {
        "record_history": config.record_history,
        "top_k": config.top_k,
        "features": list(config.features),
        "history_frames": config.history_frames,
    }


def set_monitoring_config_request(
    current: monpb.MonitoringConfig, body: MonitoringConfigBody
) -> monpb.SetMonitoringConfigRequest:
    """`current` with the fields the body sets replaced."""
    config = monpb.MonitoringConfig()
    config.CopyFrom(current)
    if body.record_history is not None:
        config.record_history = body.record_history
    if body.top_k is not None:
        config.top_k = body.top_k
    if body.features is not None:
        del config.features[:]
        config.features.extend(body.features)
    if body.history_frames is not None:
        config.history_frames = body.history_frames
    return monpb.SetMonitoringConfigRequest(config=config)


def _uint32(value: int | None, param: str) -> int:
    """None -> 0 (the service's default)."""
    if value is None:
        return 0
    if not 0 <= value <= UINT32_MAX:
        raise invalid_request(f"`{param}` is out of range.", param)
    return value


def history_request(limit: int | None, request_id: str | None) -> monpb.GetMonitoringHistoryRequest:
    return monpb.GetMonitoringHistoryRequest(
        limit=_uint32(limit, "limit"), request_id=request_id or ""
    )


def feature_list(raw: list[str], param: str = "features") -> list[int]:
    """`?features=1,2,3` and `?features=1&features=2`, in the order given."""
    indexes: list[int] = []
    for part in (p.strip() for item in raw for p in item.split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) > UINT32_MAX:
            raise invalid_request(
                f"`{param}` must be feature indexes separated by commas, such as 1,2,3; "
                f"got `{part}`.",
                param,
            )
        indexes.append(int(part))
    return indexes


def statistics_request(features: list[str], limit: int | None) -> monpb.GetFeatureStatisticsRequest:
    return monpb.GetFeatureStatisticsRequest(
        features=feature_list(features), limit=_uint32(limit, "limit")
    )


def frame(message: monpb.ActivationFrame) -> dict[str, Any]:
    return {
        "request_id": message.request_id,
        "source": message.source,
        "hook_name": message.hook_name or None,
        "tokens": steering_json.activations(message.tokens),
        "captured_at_unix_ms": message.captured_at_unix_ms,
    }


def feature_statistics(stats: monpb.FeatureStatistics) -> dict[str, Any]:
    return {
        "index": stats.index,
        "count": stats.count,
        "min": stats.min,
        "max": stats.max,
        "mean": stats.mean,
        "fraction_active": stats.fraction_active,
    }


def statistics(response: monpb.GetFeatureStatisticsResponse) -> dict[str, Any]:
    return {
        "tokens": response.tokens,
        "data": [feature_statistics(s) for s in response.features],
    }


EXPORT_TYPES = {"json": "application/json", "csv": "text/csv"}


def export_filename(format_: str) -> str:
    return f"monitoring-history.{format_}"


# ---------------------------------------------------------------- the live stream


class Selection:
    """What one WebSocket viewer asked for so far; each message changes only what it names."""

    def __init__(self, top_k: int) -> None:
        self.features: list[int] = []
        self.top_k = top_k
        self.paused = False

    def apply(self, control: MonitorControl) -> None:
        if control.features is not None:
            self.features = list(control.features)
        if control.top_k is not None:
            self.top_k = control.top_k
        if control.paused is not None:
            self.paused = control.paused

    def request(self) -> monpb.MonitorRequest:
        return monpb.MonitorRequest(features=self.features, top_k=self.top_k, paused=self.paused)


def _compact(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def monitor_frame(response: monpb.MonitorResponse) -> str:
    return _compact(
        {
            "type": "frame",
            "frame": frame(response.frame),
            "dropped_frames": response.dropped_frames,
        }
    )
