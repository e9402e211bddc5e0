# fwproxy's container image: docs/deployment.md says how to build, run and deploy it.
#
#   podman build --format docker -t fwproxy .        (or: docker build -t fwproxy .)
#   podman run --read-only -p 3128:3128 fwproxy
#
# BASE is any Debian-like image with Python 3.11 and its venv module (a test builds from a base
# made locally with mmdebstrap). Wheels in wheels/ of the build context are installed instead of
# fetching from an index (for builds without access to one; deploy/container/test does this).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY . /src
# Twisted's plugin cache is written here: the root filesystem is read-only at run time.
RUN python3 -m venv /opt/fwproxy \
 && if ls /src/wheels/*.whl >/dev/null 2>&1; then \
      /opt/fwproxy/bin/pip install --no-cache-dir --no-index --find-links /src/wheels fwproxy; \
    else \
      /opt/fwproxy/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/fwproxy/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && /opt/fwproxy/bin/pip uninstall --yes --quiet pip \
 && cp /src/deploy/container/healthcheck.py /opt/fwproxy/healthcheck.py

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fwproxy
COPY --from=build /opt/fwproxy /opt/fwproxy
COPY etc/fwproxy-container.toml /etc/fwproxy/fwproxy.toml
ENV PATH=/opt/fwproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
EXPOSE 3128
# drain: stop accepting, let transactions in flight finish (timeouts.drain), exit 0
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/fwproxy/bin/python", "/opt/fwproxy/healthcheck.py"]
ENTRYPOINT ["/opt/fwproxy/bin/fwproxy"]
CMD ["run", "--config", "/etc/fwproxy/fwproxy.toml"]
