# meshbridge SDS server: `meshbridge sds serve` as the native sidecar next to istio-proxy.
#
# Debian bookworm's python3.11 and the libraries it links, our package and its PyPI wheels in a venv
# at /opt/meshbridge; no shell, no package manager. Runs as uid 1337 (istio-proxy's) and needs no
# writable path: the pod sets readOnlyRootFilesystem.
#
# The Debian trees come from image/rootfs.sh (mmdebstrap, variant extract). Two ways to feed them in,
# everything after the `inputs` stage is the same:
#
#   make image         no Docker daemon, no image registry, no network during the build:
#                      image/build.sh runs image/rootfs.sh and `pip download` on the host, packs both
#                      into build/image/inputs.tar, then `buildah bud` this file with INPUTS=inputs-local
#                      and PIP_NO_INDEX=1.
#   docker build --build-arg INPUTS=inputs-debian -t REGISTRY/meshbridge/sds-server:0.1.0 .
#                      a registry (debian:bookworm) and Debian's mirror and PyPI reachable: the same
#                      script runs inside the build; the wheels come from PyPI.
ARG INPUTS=inputs-local

# /runtime, /build: Debian trees; /wheels: wheels for cp311 manylinux (empty when PyPI is used).
FROM scratch AS inputs-local
ADD build/image/inputs.tar /

FROM docker.io/library/debian:bookworm AS inputs-debian
COPY image/rootfs.sh /usr/local/bin/meshbridge-rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends mmdebstrap ca-certificates \
 && meshbridge-rootfs /tmp/rootfs.tar \
 && mkdir /wheels \
 && tar -xf /tmp/rootfs.tar -C / \
 && rm /tmp/rootfs.tar

FROM ${INPUTS} AS inputs

# ---- build: python3.11 + ensurepip; our package and its dependencies into the venv.
FROM scratch AS build
COPY --from=inputs /build/ /
COPY --from=inputs /wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY bridge /src/bridge
COPY sds_server /src/sds_server
COPY istio /src/istio
COPY scone /src/scone
# PIP_NO_INDEX=1: install only from /wheels (make image); empty: from PyPI.
ARG PIP_NO_INDEX=
ENV PIP_NO_INDEX=${PIP_NO_INDEX} PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN ["/usr/bin/python3.11", "-m", "venv", "/opt/meshbridge"]
RUN ["/opt/meshbridge/bin/python", "-m", "pip", "install", "--no-compile", "/src"]
RUN ["/opt/meshbridge/bin/python", "-m", "pip", "uninstall", "-y", "pip", "setuptools"]
# Smoke test: every compiled extension the CLI imports finds its libraries (the build tree holds the
# runtime tree's packages too).
RUN ["/opt/meshbridge/bin/meshbridge", "sds", "serve", "--help"]
# The root filesystem is read-only at run time: byte-code now, or every start compiles in memory.
RUN ["/opt/meshbridge/bin/python", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "/opt/meshbridge/lib"]

# ---- the image
FROM scratch
ARG VERSION=0.1.0
COPY --from=inputs /runtime/ /
COPY --from=build /opt/meshbridge /opt/meshbridge
ENV PATH=/opt/meshbridge/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1337:1337
# The pod's `command:` (istio/mesh.py) repeats this with --socket-owner. There is no shell and no
# `test`: a startup probe must exec `meshbridge sds probe --listen /run/secrets/workload-spiffe-uds/socket`
# (gRPC health check on the socket).
ENTRYPOINT ["/opt/meshbridge/bin/meshbridge"]
CMD ["sds", "serve", \
     "--workload-api", "unix:///spiffe-workload-api/spire-agent.sock", \
     "--listen", "/run/secrets/workload-spiffe-uds/socket"]
LABEL org.opencontainers.image.title="meshbridge SDS server" \
      org.opencontainers.image.description="Envoy SDS v3 (default, ROOTCA) from a SPIFFE Workload API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
