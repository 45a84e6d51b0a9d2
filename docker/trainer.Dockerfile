# GPU trainer image: torch 2.2.1 + CUDA 12.1 (from the base image) and DGL 2.1 (graph building, on the CPU).
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/sora-ml/sora-trainer:0.1.0-cu121 .
# The train component references it as $SORA_TRAINER_IMAGE; TrainJobs in k8s/ run `sora train` in it.
#
# What the GPU path needs: a CUDA build of torch, nothing more. DGL only builds the heterograph and its
# normalisation, on the CPU; the message passing runs as torch sparse matmuls on the GPU (sora/gnn.py).
# DGL's CUDA wheel (DGL_WHEELS) is preferred when its index is reachable; build with --build-arg DGL_WHEELS=
# (empty) where only the package registry is, and the registry's CPU-only dgl wheel does the same job.
# GPU tier with this image (tests/ is not in the build context; mount it):
#   docker run --gpus all -v "$PWD/tests:/opt/sora/tests:ro" --entrypoint python IMAGE -m pytest -m gpu -rs tests/test_gpu.py
FROM pytorch/pytorch:2.2.1-cuda12.1-cudnn8-runtime

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf DGLBACKEND=pytorch

# Pins from ENVIRONMENT.md: dgl 2.1 ships graphbolt libs for torch <= 2.2.1 and imports torchdata.datapipes
# and setuptools.extern; torch 2.2 is built against numpy 1.x. torch itself stays the base image's CUDA build.
ARG DGL_WHEELS=https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html
RUN pip install "torch==2.2.1" "dgl==2.1.0" ${DGL_WHEELS:+-f "$DGL_WHEELS"} \
    && pip install "torchdata==0.7.1" "setuptools<70" "numpy<2" "pytest>=8"

WORKDIR /opt/sora
COPY pyproject.toml README.md ./
COPY sora ./sora
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# torch and dgl are already satisfied above; the check fails the build if torch lost its CUDA build.
RUN pip install . \
    && python -c "import dgl, torch; assert torch.version.cuda, 'CPU-only torch'; print(dgl.__version__, torch.__version__, torch.version.cuda)"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sora
USER 10001
ENTRYPOINT ["sora"]
CMD ["--help"]
