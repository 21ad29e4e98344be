# syntax=docker/dockerfile:1
#
# The conductor controller image: `docker build -t conductor:latest .`
#
# Two stages on the same slim Python base. The builder resolves the dependencies declared in
# pyproject.toml into a virtualenv at /opt/venv, then builds and installs the conductor
# package itself (a wheel, by pip) into it; the final image holds that venv and git (for the
# Git source), no source tree. What the product reads at run time is package data in
# site-packages/controller/assets (controller/assets/__init__.py): the CRD, gunicorn's
# settings and the example app, the default manifests root. The development control plane
# (devcluster/) and the tests are not in the package.
#
# Your own manifests: mount them (a ConfigMap or volume) and point CONDUCTOR_MANIFEST_ROOT
# (or `run --manifests`) at them, or build `FROM conductor` with
# `COPY manifests /manifests` and `ENV CONDUCTOR_MANIFEST_ROOT=/manifests`; or use the Git
# source (CONDUCTOR_SOURCE=git, CONDUCTOR_GIT_URL, ...). See README, "Deploy kit".
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

# --- builder: dependencies, then the package ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# pip compiles the bytecode here: at run time nothing can be written.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only pyproject.toml: this layer is rebuilt when the dependencies change, not the code.
COPY pyproject.toml ./
# The `fast` extra (gunicorn's C HTTP parser) is published as source only: a compiler and
# Python's headers here, in the builder; the final stage copies only the built venv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && (python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
     || apt-get install -y --no-install-recommends python3-dev) \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["fast"]))' \
      > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
# The package: its sources and the files its assets/ symlinks name (building the wheel
# copies their content into it). Installed, not copied: nothing is put on PYTHONPATH.
COPY README.md ./
COPY controller ./controller
COPY config/crd ./config/crd
COPY config/gunicorn.conf.py ./config/gunicorn.conf.py
COPY manifests ./manifests
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -c 'import controller.assets as a; assert a.CRD.is_file() and a.GUNICORN_CONF.is_file() and (a.MANIFESTS / "parameters.yaml").is_file()'

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
# The working directory holds nothing: `--manifests` / CONDUCTOR_MANIFEST_ROOT name your app,
# the package's example app is the default.
WORKDIR /tmp

ENV PATH=/opt/venv/bin:$PATH \
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
