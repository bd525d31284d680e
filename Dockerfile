# syntax=docker/dockerfile:1
# One image for every `shadowtee` command. Build the GPU variant for the candidate with
#   docker build --build-arg VARIANT=gpu -t shadowtee:0.1.0-gpu .
# which adds the CUDA 12 / cuDNN 9 runtime wheels onnxruntime-gpu loads (requirements-gpu.lock);
# the NVIDIA driver comes from the node through the container toolkit.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/shadowtee
# Dependencies first, from the hash-pinned lock, so source edits reuse this layer.
COPY requirements.lock requirements-gpu.lock ./
RUN /opt/shadowtee/bin/pip install --require-hashes --no-deps -r requirements.lock \
    && if [ "$VARIANT" = "gpu" ]; then \
         /opt/shadowtee/bin/pip install --require-hashes --no-deps -r requirements-gpu.lock; \
       fi
COPY pyproject.toml README.md ./
COPY shadowtee ./shadowtee
COPY proxy ./proxy
COPY serving ./serving
COPY comparator ./comparator
COPY reports ./reports
RUN /opt/shadowtee/bin/pip install --no-deps --no-build-isolation . \
    && /opt/shadowtee/bin/pip uninstall -y pytest hypothesis mypy ruff

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="shadowtee" \
      org.opencontainers.image.description="Shadow-mode a candidate ML model on real traffic" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/shadowtee/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 shadowtee \
    && useradd --system --uid 10001 --gid shadowtee --home-dir /nonexistent --shell /usr/sbin/nologin shadowtee
COPY --from=build /opt/shadowtee /opt/shadowtee
COPY --chown=root:root models /models
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090 8001 8090
# Every shadowtee service answers /health/live on its admin or main port; the check is a
# no-dependency Python one-liner so no curl is needed in the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; u.urlopen(os.environ.get('SHADOWTEE_HEALTH_URL','http://127.0.0.1:9090/health/live'), timeout=2); sys.exit(0)"]
ENTRYPOINT ["shadowtee"]
CMD ["--help"]
