# syntax=docker/dockerfile:1
# lease-sidecar: leader election for any pod over a coordination.k8s.io/v1 Lease.
#   docker build -t lease-sidecar:dev .
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t <registry>/lease-sidecar:<tag> .
# The base is Debian's slim image plus Debian's own Python (3.13 in trixie), so the image can be
# reproduced from Debian packages alone (deploy/local/image.py does that on machines without a
# registry). The builder installs the checkout into a virtual environment; the runtime stage copies
# only that environment, on the same base stage so its interpreter path (/usr/bin/python3) stays valid.

FROM debian:trixie-slim AS python
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3=3.13.5-1 \
    && rm -rf /var/lib/apt/lists/*

FROM python AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv=3.13.5-1 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/lease-sidecar
# Dependencies first, exactly the hashed lock (`make lock` refreshes it); this layer is reused
# until the lock changes. Only what the build reads is copied (.dockerignore allow-lists it).
COPY requirements/runtime.lock ./requirements/
RUN /opt/lease-sidecar/bin/pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY sidecar/ ./sidecar/
# The package brings no unlocked dependency (--no-deps) and builds with the locked setuptools. The
# bytecode for PYTHONOPTIMIZE=2 is compiled here: the runtime root filesystem is read-only.
RUN /opt/lease-sidecar/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/lease-sidecar/bin/pip uninstall --yes pip setuptools \
    && /opt/lease-sidecar/bin/python -m compileall -q -o 2 /opt/lease-sidecar/lib \
    && /opt/lease-sidecar/bin/lease-sidecar --version

FROM python
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="lease-sidecar" \
      org.opencontainers.image.description="Leader election for any Kubernetes pod, as a sidecar over a coordination.k8s.io/v1 Lease" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:trixie-slim"
# PYTHONOPTIMIZE=2 drops docstrings and asserts (about 15 MiB less resident memory); no behaviour
# of the sidecar rests on an assert, and its unit tests also run so (make unit-optimized).
ENV PATH=/opt/lease-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/lease-sidecar /opt/lease-sidecar
# A numeric user, so Kubernetes can verify runAsNonRoot without an /etc/passwd entry.
USER 65532:65532
# 9464: /metrics, /healthz, /readyz. The local API (4040) listens on 127.0.0.1 only.
EXPOSE 9464
ENTRYPOINT ["lease-sidecar"]
CMD ["run"]
