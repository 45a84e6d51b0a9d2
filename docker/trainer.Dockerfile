# GPU trainer image: torch 2.2.1 + CUDA 12.1 and a CUDA build of DGL 2.1 from the DGL project's wheel index.
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/sora-ml/sora-trainer:0.1.0-cu121 .
# The train component references it as $SORA_TRAINER_IMAGE; TrainJobs in k8s/ run `sora train` in it.
FROM pytorch/pytorch:2.2.1-cuda12.1-cudnn8-runtime

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf DGLBACKEND=pytorch

# The registry's dgl wheels are CPU-only; the CUDA build comes from DGL's own index for torch 2.2 / cu121.
RUN pip install "dgl==2.1.0" -f https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html \
    && pip install "torchdata==0.7.1" "setuptools<70" "numpy<2"

WORKDIR /opt/sora
COPY pyproject.toml README.md ./
COPY sora ./sora
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# torch and dgl are already satisfied by the CUDA builds above.
RUN pip install . && python -c "import dgl, torch; print(dgl.__version__, torch.__version__, torch.version.cuda)"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sora
USER 10001
ENTRYPOINT ["sora"]
CMD ["--help"]
