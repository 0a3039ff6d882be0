#!/usr/bin/env bash
# `make compose-up-check`: builds the CPU image, starts the CPU stack
# (docker-compose.yml + docker-compose.cpu.yml) under a project of its own with a
# fresh data volume, waits until both containers are healthy, sends one chat
# completion through the bridge, prints the image size and the start-up times, and
# tears everything down (containers, network, volume). Needs a container engine
# with Docker Compose 2.24 or newer; it is not part of `make test`.
#
# Settings (environment):
#   COMPOSE_CHECK_ENGINE       docker (default) or podman: the CLI to use
#   COMPOSE_CHECK_BUILD_FLAGS  extra flags for the image build, e.g.
#                              "--build-arg TORCH_CPU_INDEX=https://mirror/whl/cpu"
#   COMPOSE_CHECK_BASE_IMAGE   base image instead of python:3.11-slim (any image
#                              with python3 and its venv module)
#   COMPOSE_CHECK_WHEELHOUSE   a folder of wheels to build from instead of the
#                              package indexes (served on 127.0.0.1; the build then
#                              uses the host's network)
#   COMPOSE_CHECK_TIMEOUT_S    how long to wait for both health checks (default 900)
#   MILLM_HTTP_PORT, MILLM_GRPC_PORT, MILLM_METRICS_PORT   the host ports
#                              (default 18000, 15051, 19464: not those of a stack
#                              you may be running)
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${COMPOSE_CHECK_ENGINE:-docker}
TIMEOUT_S=${COMPOSE_CHECK_TIMEOUT_S:-900}
IMAGE=millm:cpu
export MILLM_HTTP_PORT=${MILLM_HTTP_PORT:-18000}
export MILLM_GRPC_PORT=${MILLM_GRPC_PORT:-15051}
export MILLM_METRICS_PORT=${MILLM_METRICS_PORT:-19464}
compose=("$ENGINE" compose -p millm-compose-check -f docker-compose.yml -f docker-compose.cpu.yml)
base="http://127.0.0.1:$MILLM_HTTP_PORT"

if ! command -v "$ENGINE" >/dev/null 2>&1; then
  echo "compose-up-check: no '$ENGINE' command; install Docker (or set COMPOSE_CHECK_ENGINE)" >&2
  exit 2
fi
if ! "${compose[@]}" version >/dev/null 2>&1; then
  echo "compose-up-check: '$ENGINE compose' is not available (Docker Compose 2.24+ needed)" >&2
  exit 2
fi
"${compose[@]}" config --quiet

server_pid=
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "compose-up-check: FAILED; the containers' last log lines:" >&2
    "${compose[@]}" logs --no-color --tail 40 >&2 || true
  fi
  "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT INT TERM

build_flags=(--build-arg TORCH_VARIANT=cpu)
[ -z "${COMPOSE_CHECK_BASE_IMAGE:-}" ] || build_flags+=(--build-arg "BASE_IMAGE=$COMPOSE_CHECK_BASE_IMAGE")
if [ -n "${COMPOSE_CHECK_WHEELHOUSE:-}" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$COMPOSE_CHECK_WHEELHOUSE" "$port" \
    >/dev/null 2>&1 &
  server_pid=$!
  build_flags+=(--network host --build-arg PIP_NO_INDEX=1
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/")
fi
# shellcheck disable=SC2206  # word splitting of the extra flags is intended
build_flags+=(${COMPOSE_CHECK_BUILD_FLAGS:-})

echo "compose-up-check: building $IMAGE"
t0=$(date +%s)
"$ENGINE" build -t "$IMAGE" "${build_flags[@]}" .
echo "compose-up-check: built in $(($(date +%s) - t0)) s"

health() { "$ENGINE" inspect --format '{{.State.Health.Status}}' "$("${compose[@]}" ps -q "$1")"; }

# Seconds from `up` until /health first answers 200 (ready), then until the
# engine marks both containers healthy (its checks run every 10 s).
wait_up() {
  local start=$1 ready=
  while :; do
    local now elapsed
    now=$(date +%s.%N)
    elapsed=$(python3 -c "print(f'{$now - $start:.1f}')")
    if [ -z "$ready" ] && curl -fs "$base/health" >/dev/null 2>&1; then
      ready=$elapsed
    fi
    if [ -n "$ready" ] && [ "$(health inference)" = healthy ] && [ "$(health bridge)" = healthy ]; then
      echo "$ready $elapsed"
      return 0
    fi
    if python3 -c "raise SystemExit($now - $start < $TIMEOUT_S)"; then
      echo "compose-up-check: not healthy after $TIMEOUT_S s (inference: $(health inference), bridge: $(health bridge))" >&2
      return 1
    fi
    sleep 0.5
  done
}

echo "compose-up-check: starting the CPU stack (fresh data volume)"
start=$(date +%s.%N)
"${compose[@]}" up -d --no-build
times=$(wait_up "$start")
read -r cold_ready cold_healthy <<<"$times"

auth=()
[ -z "${MILLM_API_KEY:-}" ] || auth=(-H "Authorization: Bearer $MILLM_API_KEY")
model=$(curl -fsS "${auth[@]}" "$base/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
reply=$(curl -fsS "${auth[@]}" "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"max_tokens\": 16, \"temperature\": 0,
       \"messages\": [{\"role\": \"user\", \"content\": \"Say hello.\"}]}")
text=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(r["choices"][0]["message"]["content"])' "$reply")
[ -n "$text" ] || { echo "compose-up-check: empty completion: $reply" >&2; exit 1; }
grpc_ok=$(python3 -c "import socket; socket.create_connection(('127.0.0.1', $MILLM_GRPC_PORT), 3); print('open')")

echo "compose-up-check: restarting (the converted model stays in the volume)"
"${compose[@]}" stop >/dev/null
start=$(date +%s.%N)
"${compose[@]}" start >/dev/null
times=$(wait_up "$start")
read -r warm_ready warm_healthy <<<"$times"

size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo
echo "compose-up-check: OK"
echo "  image            : $IMAGE, $(python3 -c "print(f'{$size / 1e9:.2f} GB')") ($size bytes)"
echo "  first start      : /health ready after $cold_ready s, both containers healthy after $cold_healthy s"
echo "  restart          : /health ready after $warm_ready s, both containers healthy after $warm_healthy s"
echo "  chat completion  : model $model answered: $text"
echo "  gRPC port        : 127.0.0.1:$MILLM_GRPC_PORT $grpc_ok"
