# Serving image with one model baked in (k8s/components/baked-model): the project image, built from the
# same commit, plus a Sora model directory, so serving starts with the registry down.
#   docker buildx build -f docker/baked.Dockerfile --build-arg SORA_IMAGE=ghcr.io/OWNER/sora@sha256:DIGEST \
#     --build-context model=PATH/TO/MODEL_DIR -t ghcr.io/OWNER/sora-serving-baked:vVERSION .
# PATH/TO/MODEL_DIR: e.g. the champion, exported with
#   python -c "from sora.registry import load_version; load_version(URI, 'models:/sora@champion').save('model')"
# Python, dependencies and the commit are the project image's (Dockerfile, requirements.lock).
ARG SORA_IMAGE=ghcr.io/sora-ml/sora:0.1.0
FROM ${SORA_IMAGE}

COPY --from=model --chown=10001:10001 . /opt/sora/model/
ENV SORA_MODEL_DIR=/opt/sora/model
USER 10001
