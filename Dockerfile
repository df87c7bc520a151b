# The Ambidex services image: `docker build -t ambidex .`, then
# `docker run ambidex run order-sync` (settings from AMBIDEX_* variables, see
# docs/configuration.md). Kubernetes manifests in deploy/kubernetes/ run it the same way.
# Checked by hadolint in `bin/ambidex lint`. Base images are pinned by tag, not digest (no
# registry access where this was written); `bin/ambidex compose pin-digests` pins them.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra rocksdb --no-install-project
COPY ambidex ambidex
COPY services services
COPY schemas schemas
COPY deploy/topics.yaml deploy/topics.yaml
COPY deploy/connectors deploy/connectors
COPY deploy/sql deploy/sql
RUN uv sync --frozen --no-dev --extra rocksdb

FROM python:3.11-slim-bookworm
# the services' state directory belongs to the non-root user: a service creates its
# sub-directory there at start (root-owned, `ambidex run order-sync` could not)
RUN useradd --uid 10001 --create-home ambidex \
    && mkdir /state \
    && chown 10001:10001 /state
WORKDIR /app
COPY --from=build --chown=10001:10001 /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    AMBIDEX_SCHEMAS_DIR=/app/schemas \
    AMBIDEX_TABLE_STATE_DIR=/state \
    AMBIDEX_METRICS_PORT=9400 \
    AMBIDEX_LOG_FORMAT=json
USER 10001
VOLUME /state
EXPOSE 9400
# the service's own liveness endpoint (python: the slim image has no curl)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AMBIDEX_METRICS_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["ambidex"]
CMD ["--help"]
