# syntax=docker/dockerfile:1
# rq-janitor: the daemon (`janitor run`) by default; any other command as arguments:
#   docker build -t rq-janitor .
#   docker run --rm -e JANITOR_REDIS_URL=redis://redis:6379/0 rq-janitor                # daemon
#   docker run --rm -e JANITOR_REDIS_URL=redis://redis:6379/0 rq-janitor run --once     # one pass
#   docker run --rm -e JANITOR_REDIS_URL=redis://redis:6379/0 rq-janitor check

# Build stage: a virtualenv with the package and its dependencies, so the final image
# carries neither pip's cache nor the build backend.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/rq-janitor
WORKDIR /src
# The dependencies and the build backend at the versions the tests ran (requirements/image.txt,
# written by scripts/lock), hash-checked; then the package itself, built without isolation so
# nothing unlocked is fetched; the build backend leaves again.
COPY requirements/image.txt requirements/image.txt
RUN /opt/rq-janitor/bin/pip install --require-hashes --no-deps -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY janitor/ janitor/
RUN /opt/rq-janitor/bin/pip install --no-deps --no-build-isolation . \
 && /opt/rq-janitor/bin/pip uninstall --yes hatchling pathspec pluggy trove-classifiers

FROM ${BASE}
LABEL org.opencontainers.image.title="rq-janitor" \
      org.opencontainers.image.description="Maintenance and garbage collection for RQ data in Redis and Valkey" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 janitor \
 && useradd --system --uid 10001 --gid janitor --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin janitor
COPY --from=build /opt/rq-janitor /opt/rq-janitor
# The image's default config only moves [http] listen to 0.0.0.0 (probes and Prometheus
# come from outside the container); mount your own file over it, or set JANITOR_CONFIG.
COPY deploy/container/janitor.toml /etc/rq-janitor/janitor.toml
ENV PATH=/opt/rq-janitor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JANITOR_CONFIG=/etc/rq-janitor/janitor.toml
USER 10001:10001
EXPOSE 9808
# `janitor healthcheck` asks /healthz at the configured [http] listen (the same settings as
# the daemon), so moving the port keeps the check right; anything but 2xx fails it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["janitor", "healthcheck"]
# Exec form: janitor is PID 1 and gets SIGTERM itself (docker stop, Kubernetes); it
# finishes the current batch, releases the lease and exits 0 well inside docker's 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["janitor"]
CMD ["run"]
