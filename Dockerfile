# syntax=docker/dockerfile:1
# One image for every `shadowtee` command, with the runtime dependencies only
# (requirements-runtime.lock: no test, lint, model-building or deploy-checking tools).
# Build the GPU variant for the candidate with
#   docker build --build-arg VARIANT=gpu -t shadowtee:0.1.0-gpu .
# which adds the CUDA 13 / cuDNN 9 runtime wheels onnxruntime-gpu's CUDA provider loads
# (requirements-gpu.lock). Nothing in onnxruntime's provider library points at them (no RPATH),
# so `shadowtee serve` calls onnxruntime.preload_dlls() before a CUDA session, and
# LD_LIBRARY_PATH below names the wheels' lib directories as well (absent, and so harmless, in the
# CPU image). The NVIDIA driver (libcuda.so.1) comes from the node through the container toolkit.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/shadowtee
# Dependencies first, from the hash-pinned lock, so source edits reuse this layer.
COPY requirements-runtime.lock requirements-gpu.lock ./
RUN /opt/shadowtee/bin/pip install --require-hashes --no-deps -r requirements-runtime.lock \
    && if [ "$VARIANT" = "gpu" ]; then \
         /opt/shadowtee/bin/pip install --require-hashes --no-deps -r requirements-gpu.lock; \
       fi
COPY pyproject.toml README.md ./
COPY shadowtee ./shadowtee
COPY proxy ./proxy
COPY serving ./serving
COPY comparator ./comparator
COPY reports ./reports
COPY contract ./contract
# setuptools and wheel build shadowtee here and are not needed at run time.
RUN /opt/shadowtee/bin/pip install --no-deps --no-build-isolation . \
    && /opt/shadowtee/bin/pip uninstall -y setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="shadowtee" \
      org.opencontainers.image.description="Shadow-mode a candidate ML model on real traffic" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/shadowtee/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLCONFIGDIR=/tmp/matplotlib \
    LD_LIBRARY_PATH=/opt/shadowtee/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/shadowtee/lib/python3.11/site-packages/nvidia/cudnn/lib
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
