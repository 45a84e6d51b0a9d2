# CPU image for the pipeline components, the MLflow server and the BentoML service.
#   docker build --build-arg SORA_GIT_COMMIT="$(git rev-parse HEAD)" -t ghcr.io/OWNER/sora:SHA .
# CI (.github/workflows/images.yml) builds and pushes it tagged by commit SHA; the pipeline is compiled
# against its digest ($SORA_IMAGE), so a code change always changes the steps' cache key.
#
# Python is in the base tag and must satisfy pyproject.toml's requires-python (tests/test_images.py).
# Every dependency comes from requirements.lock, the lock `make venv` installs, so the image runs the
# versions `make test` tested. PyPI's torch 2.2.1 wheel is the CUDA 12.1 build (it pulls the nvidia-*
# wheels); it runs on CPU too, and one lock for every image is worth the extra size.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf BENTOML_HOME=/tmp/bentoml DGLBACKEND=pytorch

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sora
# Dependencies first, in their own layer (rebuilt only when the lock or the dependency list changes):
# pyproject.toml's dependencies plus the MLflow server's Postgres driver, every version from the lock.
COPY requirements.lock pyproject.toml README.md ./
COPY docker/mlflow-server.in ./docker/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/sora-deps.txt \
    && pip install -c requirements.lock -r /tmp/sora-deps.txt -r docker/mlflow-server.in
COPY sora ./sora
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# Sora itself, resolving nothing; pip check fails the build if the lock missed a requirement.
RUN pip install --no-deps . && pip check

# The commit the image was built from (.git is not in the build context): sora.registry.buildinfo reads these,
# and every model version registered from this image is tagged with them. Last, so the layers above
# stay cached across commits.
ARG SORA_GIT_COMMIT=""
ARG SORA_GIT_TREE=""
ENV SORA_GIT_COMMIT=${SORA_GIT_COMMIT} SORA_GIT_TREE=${SORA_GIT_TREE}
LABEL org.opencontainers.image.revision=${SORA_GIT_COMMIT} \
      org.opencontainers.image.source="https://github.com/sora-ml/sora"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sora
USER 10001
EXPOSE 3000 5000
CMD ["bentoml", "serve", "sora_serving.service:SoraService", "--host", "0.0.0.0", "--port", "3000"]
