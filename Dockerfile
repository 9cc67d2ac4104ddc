# One image for every role of kopflet:
#   kopflet controller          the Deployment
#   kopflet agent               the agent container of the DaemonSet
#   dockerd                     the node's Docker engine, the DaemonSet's second container
#
# The Python package is installed from wheels built beforehand into dist/wheels/ (kopflet and
# every dependency, for CPython 3.11): scripts/build-image makes them and then runs this build.
# Nothing is fetched from a package index during the build, so it works where the build cannot
# verify TLS to one.
#
# BASE_IMAGE is any Debian bookworm image; one with Python 3.11 already (the default) is used as
# it is, one without (a plain Debian root filesystem) gets Debian's python3, which is 3.11.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# iptables, nftables, iproute2, conntrack: the agent's proxy rules, routes and flow cleanup.
# docker.io: the node's engine. busybox-static: the busybox image the examples and the
# instances' sandboxes use (`kopflet load-image --busybox` makes it from this binary).
# tini: PID 1, reaps whatever the engine or the agent orphans.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        busybox-static ca-certificates conntrack docker.io iproute2 iptables nftables tini \
 && if ! command -v python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3 python3-venv; \
    fi \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

FROM runtime AS install
COPY dist/wheels/ /wheels/
RUN python3 -m venv /opt/kopflet \
 && /opt/kopflet/bin/pip install --no-index --no-cache-dir --find-links /wheels kopflet \
 && /opt/kopflet/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/kopflet/bin/kopflet --version

FROM runtime
COPY --from=install /opt/kopflet /opt/kopflet
ENV PATH=/opt/kopflet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The manifests set only `args`, so every role runs under tini.
ENTRYPOINT ["tini", "--"]
CMD ["kopflet", "--help"]
