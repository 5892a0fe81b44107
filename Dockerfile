# syntax=docker/dockerfile:1
#
# The `sluice` binary on a small Debian runtime, run as a non-root user.
#
#   docker build -t sluice .
#   docker run --rm sluice --help
#
# docker-compose.yml builds this image for its worker and producer services.

# The builder's Debian release must match the runtime's: the binary links glibc
# dynamically, and `rust:1` alone follows Debian's newest release, whose glibc is
# newer than bookworm's, so its binaries would not load on bookworm-slim.
FROM rust:1-bookworm AS build
# rdkafka-sys builds librdkafka from source with its configure script and make
# (C compiler, make); libz-sys finds the system zlib through pkg-config. cmake is
# for rdkafka's optional cmake-build feature.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds,
# so a source change recompiles Sluice, not librdkafka. The target directory is a
# cache mount, not part of the image, hence the copy out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
 && cp target/release/sluice /usr/local/bin/sluice

FROM debian:bookworm-slim
# ca-certificates for TLS to managed Kafka; zlib1g is the one shared library the
# binary needs beyond glibc (slim has it, named here so that stays true).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so file permissions and pod security policies can name it.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
USER sluice
# Sluice handles SIGTERM itself (drain, commit, leave the group), so it can be PID 1.
ENTRYPOINT ["sluice"]
CMD ["--help"]
