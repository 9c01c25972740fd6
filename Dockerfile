# neurodl BIDS App image: `docker run neurodl /data /out participant`, then `... group`.
# CPU-only builds (CI) pass --build-arg TORCH_SPEC="torch==2.13.0+cpu"; the default is the
# ordinary torch release, with CUDA.
FROM debian:bookworm-slim

ARG TORCH_SPEC="torch>=2.1,<3"
ARG VERSION=0.1.0
ARG REVISION=unknown
# where a CPU-only torch comes from, when not from the default index (CI)
ARG PIP_EXTRA_INDEX_URL

LABEL org.opencontainers.image.title="neurodl" \
      org.opencontainers.image.description="Reproducible, leakage-proof deep learning on BIDS datasets (a BIDS App)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/neurodl/neurodl" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, on its own layer: the largest and the most stable
RUN pip install "${TORCH_SPEC}"

COPY pyproject.toml setup.py README.md /src/
COPY bidsapp_dl /src/bidsapp_dl
# the compiled kernels of the participant level need a C compiler, removed in the same layer
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
    && pip install "/src[validate]" && rm -rf /src \
    && python -c "import bidsapp_dl.extract._kernels" \
    && apt-get purge -y --auto-remove gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +

# runs read-only as any user: every cache goes to /tmp (writable in BIDS Apps runs)
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    TORCH_HOME=/tmp/.cache/torch \
    DENO_DIR=/tmp/.cache/deno \
    NEURODL_CONTAINER_TAG="neurodl:${VERSION}"
RUN useradd --no-create-home --uid 1000 --shell /usr/sbin/nologin neurodl
USER neurodl
WORKDIR /tmp
ENTRYPOINT ["neurodl"]
