# GPU trainer image: the pipeline's train step and the per-run TrainJobs (`sora train` under torchrun).
#   docker build -f docker/trainer.Dockerfile --build-arg SORA_GIT_COMMIT="$(git rev-parse HEAD)" \
#     -t ghcr.io/OWNER/sora-trainer:SHA .
# CI (.github/workflows/images.yml) builds and pushes it by commit SHA; the pipeline takes its digest
# ($SORA_TRAINER_IMAGE).
#
# Python 3.11 from the base tag (pyproject.toml's requires-python; a CUDA base such as
# pytorch/pytorch:2.2.1-cuda12.1-cudnn8-runtime ships conda Python 3.10 and cannot install Sora).
# CUDA comes from the wheels: PyPI's torch 2.2.1 for Linux is the CUDA 12.1 build and pulls the
# nvidia-*-cu12 runtime wheels; the node's driver is all the host adds. Every version comes from
# requirements.lock, the lock `make venv` installs. DGL is PyPI's CPU-only 2.1.0, and that is enough:
# it only builds the graph and its normalisation on the CPU, the message passing runs as torch sparse
# matmuls on the GPU (sora/model/gnn.py).
# GPU tier with this image (tests/ is not in the build context; mount it):
#   docker run --gpus all -v "$PWD/tests:/opt/sora/tests:ro" --entrypoint python IMAGE -m pytest -m gpu -rs tests/test_gpu.py
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf DGLBACKEND=pytorch

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sora
# Dependencies first, in their own layer: pyproject.toml's dependencies plus pytest (for the GPU tier
# above), every version from the lock.
COPY requirements.lock pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/sora-deps.txt \
    && pip install -c requirements.lock -r /tmp/sora-deps.txt pytest
COPY sora ./sora
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# Sora itself, resolving nothing; the build fails if the lock missed a requirement or torch lost CUDA.
RUN pip install --no-deps . && pip check \
    && python -c "import dgl, torch; assert torch.version.cuda, 'CPU-only torch'; print(dgl.__version__, torch.__version__, torch.version.cuda)"

# The commit the image was built from (.git is not in the build context), read by sora.registry.buildinfo.
ARG SORA_GIT_COMMIT=""
ARG SORA_GIT_TREE=""
ENV SORA_GIT_COMMIT=${SORA_GIT_COMMIT} SORA_GIT_TREE=${SORA_GIT_TREE}
LABEL org.opencontainers.image.revision=${SORA_GIT_COMMIT} \
      org.opencontainers.image.source="https://github.com/sora-ml/sora"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sora
USER 10001
ENTRYPOINT ["sora"]
CMD ["--help"]
