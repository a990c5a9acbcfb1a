# syntax=docker/dockerfile:1
# The Elevator-compatible server in a container (default target), and a benchmark image
# (target "bench") that docker-compose.yml points at it.
#
#   docker build -t pyelevator-pool-server .
#   docker run -d -p 127.0.0.1:4141:4141 -p 127.0.0.1:9141:9141 -v elevator-data:/data pyelevator-pool-server
#
# tests/integration/test_docker.py runs the CMD of the last stage locally, substituting only the data dir,
# the ports (and the bind address), so keep it one plain exec-form command line.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The sources are bind-mounted for the install only: the image keeps the installed package.
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install "/src[server,metrics]" \
 && groupadd --system --gid 10001 elevator \
 && useradd --system --uid 10001 --gid elevator --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin elevator \
 && mkdir -p /data \
 && chown elevator:elevator /data

# docker compose run --rm benchmark  (or: docker build --target bench .)
FROM base AS bench
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install "/src[server,bench]"
WORKDIR /bench
COPY benchmarks ./benchmarks
RUN mkdir -p /results && chown elevator:elevator /results
USER elevator
ENTRYPOINT ["python", "-m", "benchmarks"]
CMD ["--out", "/results"]

FROM base AS server
USER elevator
WORKDIR /data
VOLUME ["/data"]
# 4141: the Elevator protocol; 9141: Prometheus metrics over HTTP (docs/metrics.rst)
EXPOSE 4141 9141
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys; from pyelevator_pool.testing import ping; sys.exit(0 if ping('tcp://127.0.0.1:4141', 2.0) else 1)"]
# Bound to every interface inside the container: publish the port to choose who reaches it.
CMD ["elevator-server", "--data-dir", "/data", "--port", "4141", "--bind", "0.0.0.0", "--metrics-port", "9141"]
