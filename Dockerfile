# t2starmap BIDS-App image.
#
#   docker build -t t2starmap .                       # GPU-capable torch (CUDA libraries from PyPI)
#   docker build -t t2starmap:cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       --build-arg TORCH_VERSION=2.13.0+cpu .       # CPU-only torch, a much smaller image
#   docker run --rm --gpus all --read-only --tmpfs /tmp \
#       -v /data/bids:/bids:ro -v /data/out:/out t2starmap /bids /out participant
#
# Build arguments (the only knobs; see docs/containers.md):
#   BASE_IMAGE        a Debian bookworm image with Python 3.11 and its venv module
#   TORCH_VERSION     the torch release (with a local label such as +cpu to force that build)
#   TORCH_INDEX_URL   the index torch comes from (PyPI: CUDA-enabled builds on Linux x86_64)
#   TORCH_FIND_LINKS  an extra place pip looks for a torch wheel (a URL or a folder), e.g. a
#                     local wheel served over HTTP for offline builds; empty: none
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- stage 1: build the project's wheel ---------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir setuptools==84.2.1 wheel==0.45.1
WORKDIR /src
COPY pyproject.toml README.md run.py ./
COPY src/ src/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /dist .

# --- stage 2: the runtime image -----------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_FIND_LINKS=""
# Everything writable lives under /tmp, so the image runs with a read-only root filesystem
# (`--read-only --tmpfs /tmp`) and under any user id (Apptainer runs as the calling user).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    MPLCONFIGDIR=/tmp/.config/matplotlib \
    DENO_DIR=/tmp/.cache/deno \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Dependencies first (pinned; this layer is reused while only the source changes).
COPY docker/requirements.txt /tmp/requirements.txt
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} \
        "torch==${TORCH_VERSION}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Labels and the source come last, so a new commit reuses the dependency layer above.
ARG VERSION=0.1.0
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="t2starmap" \
      org.opencontainers.image.description="BIDS-App: T2*, R2* and S0 maps from multi-echo GRE (BIDS MEGRE) MRI, fitted with torch" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/t2starmap/t2starmap" \
      org.opencontainers.image.url="https://github.com/t2starmap/t2starmap" \
      org.opencontainers.image.documentation="https://github.com/t2starmap/t2starmap/blob/main/docs/containers.md" \
      org.opencontainers.image.licenses="Apache-2.0"

# The project itself, from the wheel built above, and the BIDS-App entry point.
COPY --from=build /dist/ /tmp/dist/
COPY run.py /opt/t2starmap/run.py
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && rm -r /tmp/dist \
    && pip check \
    && python -c "import t2starmap, torch; print('t2starmap', t2starmap.__version__, 'torch', torch.__version__)" \
    && dcm2niix -h > /dev/null \
    && bids-validator-deno --version \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin t2starmap \
    && rm -rf /tmp/.cache /tmp/.config

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/python", "/opt/t2starmap/run.py"]
CMD ["--help"]
