# syntax=docker/dockerfile:1
# Two stages: build with the Rust toolchain, run on a slim Debian with only
# CA certificates (for amqps://) and an unprivileged user.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY config ./config
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hookrelay \
    && cp target/release/hookrelay /usr/local/bin/hookrelay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home hookrelay \
    && mkdir -p /var/lib/hookrelay && chown hookrelay /var/lib/hookrelay
# The spool lives here; mount a volume on it so it outlives the container.
ENV HOOKRELAY__SPOOL__PATH=/var/lib/hookrelay/spool.sqlite
VOLUME /var/lib/hookrelay
COPY --from=build /usr/local/bin/hookrelay /usr/local/bin/hookrelay
USER hookrelay
EXPOSE 8080 9090
ENTRYPOINT ["hookrelay"]
CMD ["serve"]
