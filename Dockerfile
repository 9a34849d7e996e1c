# syntax=docker/dockerfile:1
# lease-sidecar: leader election for any pod over a coordination.k8s.io/v1 Lease.
#   docker build -t lease-sidecar:dev .
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t <registry>/lease-sidecar:<tag> .
# The builder installs the checkout into a virtual environment; the runtime stage copies only
# that environment, on the same base image so its interpreter path stays valid.

FROM python:3.12-slim-trixie AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/lease-sidecar
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

FROM python:3.12-slim-trixie
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
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim-trixie"
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
