# CPU image for the pipeline components, the MLflow server and the BentoML service.
#   docker build -t ghcr.io/sora-ml/sora:0.1.0 .
# The components reference it as $SORA_IMAGE (default ghcr.io/sora-ml/sora:0.1.0).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf BENTOML_HOME=/tmp/bentoml DGLBACKEND=pytorch

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sora
# CPU wheel of the pinned torch first, so the project's pins do not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.2.1
COPY pyproject.toml README.md ./
COPY sora ./sora
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install . "psycopg2-binary>=2.9" "boto3>=1.34"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sora
USER 10001
EXPOSE 3000 5000
CMD ["bentoml", "serve", "sora_serving.service:SoraService", "--host", "0.0.0.0", "--port", "3000"]
