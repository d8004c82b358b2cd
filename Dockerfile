# syntax=docker/dockerfile:1
# One image for both roles: `graven node` (every ConsensusCluster pod) and `graven operator`.
#   docker build -t graven:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- stage 1: build wheels for graven and all of its dependencies ----------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (see [tool.setuptools] in pyproject.toml).
COPY pyproject.toml README.md ./
COPY node ./node
COPY operator ./operator
# -P: do not put the working directory on sys.path. Here it holds the top-level operator/
# package, which would shadow the standard library's `operator` module inside pip
# ("ImportError: cannot import name 'eq' from 'operator'").
RUN python -P -m pip wheel --wheel-dir /wheels .

# --- stage 2: runtime: the wheels installed, no compilers, no sources, not root --------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels graven \
    && python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 graven \
    && useradd --system --uid 10001 --gid graven --home-dir /var/lib/graven \
       --shell /usr/sbin/nologin graven \
    && install -d -o graven -g graven -m 0750 /var/lib/graven
WORKDIR /var/lib/graven
# Numeric, so Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 10001:10001
ENTRYPOINT ["graven"]
CMD ["--help"]
