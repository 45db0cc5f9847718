# syntax=docker/dockerfile:1
#
# One image with every Tocsin binary; the command chooses the service:
#
#   docker build -t tocsin .
#   docker run --rm tocsin tocsin-planner        # or tocsin-renderer, tocsin-sender,
#                                                # tocsin-tracker, tocsin-api,
#                                                # tocsin-standins, tocsin-loadgen, tocsin
#
# Configuration as everywhere else (README, "Configuration"): the defaults are compiled in,
# TOCSIN_CONFIG names a mounted file, TOCSIN__SECTION__KEY variables override.
# deploy/docker-compose.yml and deploy/k8s/ use this image.
#
# Written and checked without a container engine (none on the project's machines):
# deploy/validate.sh checks that the binaries named here are the workspace's, but nothing
# here has been built by Docker yet.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# librdkafka is built from source by rdkafka-sys (default features: its own ./configure and
# make, C and C++, no cmake), linked against the system zlib found through pkg-config.
# ring (rustls, DKIM) needs the C compiler too; protox compiles proto/ without protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY proto proto
COPY services services
# The registry and the target directory live in BuildKit cache mounts: a rebuild after a
# source change recompiles the workspace crates only, not the ~400 dependencies (nor
# librdkafka). Cache mounts are not part of the image, hence the copy into /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p tocsin-api -p tocsin-planner -p tocsin-renderer -p tocsin-sender \
      -p tocsin-tracker -p tocsin-standins -p tocsin-loadgen -p tocsin-cli \
 && mkdir /out \
 && cp target/release/tocsin-api target/release/tocsin-planner \
       target/release/tocsin-renderer target/release/tocsin-sender \
       target/release/tocsin-tracker target/release/tocsin-standins \
       target/release/tocsin-loadgen target/release/tocsin /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: a private SMTP relay's or Kafka's CA is usually added to the system
# store; the HTTP providers' roots are compiled in (webpki-roots). zlib1g (librdkafka's
# compression) is already part of the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tocsin \
 && useradd --system --uid 10001 --gid tocsin --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tocsin
COPY --from=builder /out/ /usr/local/bin/
# A probe for container health checks without curl: `tocsin-probe PORT PATH` exits 0 when
# 127.0.0.1:PORT answers PATH with 200 (/readyz, /healthz, the stand-ins' health route).
COPY deploy/docker/tocsin-probe /usr/local/bin/tocsin-probe
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Every service stops on SIGTERM: it stops taking messages, finishes or gives back what is
# in flight within [kafka] shutdown_grace_ms (30 s), commits and leaves its group. Give it
# that long (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
