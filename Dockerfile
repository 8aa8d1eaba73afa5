# syntax=docker/dockerfile:1
# checkpoint container image.
#   docker build -t checkpoint:dev .
#   docker run --rm -p 50051:50051 -p 3000:3000 -v "$PWD/envoy/demo:/etc/checkpoint:ro" \
#     -e CONFIGURATION_PATH=/etc/checkpoint -e CONFIGURATION_FILE_NAME=auth -e USERINFO_URL=http://idp/me checkpoint:dev
# The build needs crates.io only (the Envoy protos come from the envoy-types crate at build time).

# ---- base images, pinned by digest ------------------------------------------------------------------------
# A tag can be moved to other content, a digest cannot: both stages start from name:tag@digest, the tag kept for
# readers. Where the digests come from (no image registry was reachable where this file was written, so they
# were taken from records and not resolved here; a wrong one fails the build, it cannot change what is built):
# - rust:1.95-bookworm: the multi-platform index Docker's official-images record lists for that tag
#   (docker-library/repo-info, repos/rust/remote/1.95-bookworm.md, the build of 2026-05-08);
# - gcr.io/distroless/cc-debian12:nonroot: the multi-platform index that public projects pin for that tag
#   (reviewed 2026-10-08 by one of them).
# To move to newer images, take the "Digest:" line of `docker buildx imagetools inspect <name:tag>` for each and
# replace it here (Renovate and Dependabot do this for FROM lines). tests/manifests.rs checks every FROM is pinned.

# ---- build -----------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm@sha256:adad87df11151c18ba1689c3e1ea8d4810540a29c0adf4a3d69aec35d8ed8968 AS builder
WORKDIR /src
# rust-toolchain.toml pins the same toolchain as this image; the whole context is copied (see .dockerignore) so
# that every target Cargo.toml may declare is present.
COPY . .
# scripts/build-release.sh: the release binary built with a profile of the Checks it answers (an instrumented build
# run under a training load on loopback, then the optimised build; llvm-profdata comes from the rustup component
# llvm-tools, which the script adds), its hot code linked together (bench/hot-functions.txt; the script says why).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh \
    && install -D -m 0755 target/dist/checkpoint /out/checkpoint

# ---- run -------------------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates, no shell; the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=builder /out/checkpoint /usr/local/bin/checkpoint
# In a container checkpoint must listen on the pod's addresses; override for a loopback-only sidecar.
ENV CHECKPOINT_GRPC_ADDR=0.0.0.0:50051 \
    HTTP_PORT=3000
USER 65532:65532
# 50051: gRPC (ext_authz Check, health, reflection); 3000: /-/healthz, /-/ready, /-/check-up
EXPOSE 50051 3000
ENTRYPOINT ["/usr/local/bin/checkpoint"]
