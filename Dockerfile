# syntax=docker/dockerfile:1
# checkpoint container image.
#   docker build -t checkpoint:dev \
#     --build-arg RUST_DIGEST=sha256:... --build-arg RUNTIME_DIGEST=sha256:... .
#   docker run --rm -p 50051:50051 -p 3000:3000 -v "$PWD/envoy/demo:/etc/checkpoint:ro" \
#     -e CONFIGURATION_PATH=/etc/checkpoint -e CONFIGURATION_FILE_NAME=auth -e USERINFO_URL=http://idp/me checkpoint:dev
# The build needs crates.io only (the Envoy protos come from the envoy-types crate at build time).

# ---- base images, pinned by digest ------------------------------------------------------------------------
# A tag can be moved to other content, a digest cannot: both stages start from IMAGE@DIGEST. The digests
# have no default (this file was written where no registry was reachable, and a digest is not guessed), so
# the build fails until they are given. Take them from the registry for the tags below, e.g. the "Digest:"
# line of `docker buildx imagetools inspect rust:1.95-bookworm` and of
# `docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot` (the multi-platform index), and
# keep them in the release pipeline's build command. tests/manifests.rs checks every FROM is pinned.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUST_DIGEST
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG RUNTIME_DIGEST

# ---- build -----------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE}@${RUST_DIGEST} AS builder
WORKDIR /src
# rust-toolchain.toml pins the same toolchain as this image; the whole context is copied (see .dockerignore) so
# that every target Cargo.toml may declare is present.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin checkpoint \
    && install -D -m 0755 target/release/checkpoint /out/checkpoint

# ---- run -------------------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates, no shell; the :nonroot tag runs as uid/gid 65532.
FROM ${RUNTIME_IMAGE}@${RUNTIME_DIGEST}
COPY --from=builder /out/checkpoint /usr/local/bin/checkpoint
# In a container checkpoint must listen on the pod's addresses; override for a loopback-only sidecar.
ENV CHECKPOINT_GRPC_ADDR=0.0.0.0:50051 \
    HTTP_PORT=3000
USER 65532:65532
# 50051: gRPC (ext_authz Check, health, reflection); 3000: /-/healthz, /-/ready, /-/check-up
EXPOSE 50051 3000
ENTRYPOINT ["/usr/local/bin/checkpoint"]
