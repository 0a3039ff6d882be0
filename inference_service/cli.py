"""`millm-inference` / `python -m inference_service`: start the gRPC inference service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from pydantic import ValidationError

from inference_service.config import InferenceSettings
from inference_service.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="millm-inference",
        description="miLLM inference service. Every setting is also read from MILLM_* "
        "environment variables (for example MILLM_MODEL, MILLM_GRPC_PORT).",
    )
    parser.add_argument("--model", help="builtin, a local folder, a .gguf file or a Hub id")
    parser.add_argument("--grpc-host")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = InferenceSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        print(
            f"millm-inference: invalid setting MILLM_{field.upper()}: {first['msg']}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level, settings.log_json)
    from inference_service.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
