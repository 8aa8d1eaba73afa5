# syntax=docker/dockerfile:1
# checkpoint container image.
#   docker build -t checkpoint:dev .
#   docker run --rm -p 50051:50051 -p 3000:3000 -v "$PWD/envoy/demo:/etc/checkpoint:ro" \
#     -e CONFIGURATION_PATH=/etc/checkpoint -e CONFIGURATION_FILE_NAME=auth -e USERINFO_URL=http://idp/me checkpoint:dev
# The build needs crates.io only (the Envoy protos come from the envoy-types crate at build time).

# ---- build -----------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
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
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/checkpoint /usr/local/bin/checkpoint
# In a container checkpoint must listen on the pod's addresses; override for a loopback-only sidecar.
ENV CHECKPOINT_GRPC_ADDR=0.0.0.0:50051 \
    HTTP_PORT=3000
USER 65532:65532
# 50051: gRPC (ext_authz Check, health, reflection); 3000: /-/healthz, /-/ready, /-/check-up
EXPOSE 50051 3000
ENTRYPOINT ["/usr/local/bin/checkpoint"]
