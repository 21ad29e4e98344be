# syntax=docker/dockerfile:1
#
# The conductor controller image: `docker build -t conductor:latest .`
#
# Two stages on the same slim Python base. The builder resolves the dependencies declared in
# pyproject.toml into a virtualenv at /opt/venv; the final image holds that venv, git (for
# the Git source), and the source tree laid out as in a checkout:
#   /app/controller          the package (on PYTHONPATH)
#   /app/config/crd          the DeploymentParameters CRD, also its parameter schema
#   /app/manifests           the example app, baked in as the reference embeds its manifests
# The package is deliberately not pip-installed: it finds the CRD and the default manifests
# relative to its own parent directory (controller/crds.py CRD_FILE,
# controller/parameters.py DEFAULT_CRD, controller/config.py DEFAULT_MANIFESTS), which only
# resolves inside such a tree, not in site-packages. So the venv holds only dependencies and
# /app is on PYTHONPATH.
#
# Your own manifests: mount them over /app/manifests (a ConfigMap or volume), or build
# `FROM conductor` with `COPY manifests /app/manifests`; or use the Git source
# (CONDUCTOR_SOURCE=git, CONDUCTOR_GIT_URL, ...). See README, "Deploy kit".
#
# tests/deploy/test_image.py builds this file with buildah and runs the image with podman
# (on a base image made locally with debootstrap: `--build-arg PYTHON_IMAGE=...`).
#
# Read-only root filesystem: nothing is written outside /tmp. HOME (the Git cache under
# ~/.cache, ssh's known_hosts, the event store under ~/.local/state), TMPDIR (gunicorn's
# worker heartbeat, the Kubernetes client's CA files) all point there, bytecode is compiled
# at build time and never written at run time. Mount an emptyDir at /tmp
# (config/manager/deployment.yaml does).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: dependencies only ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# pip compiles the dependencies' bytecode here: at run time nothing can be written.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only pyproject.toml: this layer is rebuilt when the dependencies change, not the code.
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt

# --- final ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="conductor" \
      org.opencontainers.image.description="GitOps reconcile-loop controller for multi-service Kubernetes apps" \
      org.opencontainers.image.licenses="Apache-2.0"

# git for the Git source (gitpython runs the git binary); ssh for git@ URLs with
# --git-ssh-key-file.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, numeric non-root user (runAsNonRoot can verify it; ssh needs a passwd entry).
RUN groupadd --system --gid 10001 conductor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin conductor

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY controller /app/controller
COPY config/crd /app/config/crd
COPY config/gunicorn.conf.py /app/config/gunicorn.conf.py
COPY manifests /app/manifests
# Bytecode now (root owns /app, the runtime user cannot write there), and `conductor` as
# a command for `kubectl exec ... -- conductor --help`.
RUN python -m compileall -q /app/controller \
 && printf '#!/bin/sh\nexec python -m controller "$@"\n' > /usr/local/bin/conductor \
 && chmod 0755 /usr/local/bin/conductor

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001
EXPOSE 8081
# `run` binds the API to 127.0.0.1 by default (loopback only, safe anywhere); in a pod the
# kubelet's probes and the Service need `run --host 0.0.0.0`, which the Deployment passes.
ENTRYPOINT ["python", "-m", "controller"]
CMD ["run"]
