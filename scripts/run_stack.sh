#!/usr/bin/env bash
# Starts the inference service and the bridge, waits for the model, prints where
# everything is, and stops both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
GRPC_PORT=${MILLM_GRPC_PORT:-50051}
HTTP_HOST=${MILLM_HTTP_HOST:-127.0.0.1}
HTTP_PORT=${MILLM_HTTP_PORT:-8000}
export MILLM_INFERENCE_ADDRESS=${MILLM_INFERENCE_ADDRESS:-127.0.0.1:$GRPC_PORT}

"$PY" -m inference_service & inference=$!
"$PY" -m openai_bridge & bridge=$!
trap 'kill $inference $bridge 2>/dev/null; wait' INT TERM EXIT

echo "miLLM: loading the model (the first start converts the built-in model once, about a minute)..."
for _ in $(seq 1 600); do
  if ! kill -0 $inference 2>/dev/null || ! kill -0 $bridge 2>/dev/null; then
    echo "miLLM: a process exited during start-up; see the log above." >&2
    exit 1
  fi
  if curl -fs "http://$HTTP_HOST:$HTTP_PORT/health" >/dev/null 2>&1; then
    echo
    echo "miLLM is ready."
    echo "  OpenAI API : http://$HTTP_HOST:$HTTP_PORT/v1   (for example: curl http://$HTTP_HOST:$HTTP_PORT/v1/models)"
    echo "  Admin UI   : http://$HTTP_HOST:$HTTP_PORT/"
    echo "  gRPC       : $MILLM_INFERENCE_ADDRESS   (grpcurl -plaintext $MILLM_INFERENCE_ADDRESS list)"
    echo "Press Ctrl-C to stop."
    break
  fi
  sleep 1
done
wait -n $inference $bridge
