# Multi-stage build: compile in the Rust image, run in a small Debian image as a
# non-root user. The health check asks /healthz through bash's /dev/tcp (no curl
# in the image); it needs HTTP_ADDR to stay on.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, against empty crates, so that a change of the sources
# rebuilds only the workspace's own crates (this layer stays cached).
COPY Cargo.toml Cargo.lock ./
COPY cron/Cargo.toml cron/
COPY entity/Cargo.toml entity/
COPY migration/Cargo.toml migration/
RUN mkdir -p src cron/src entity/src migration/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs cron/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
 && cargo build --release --locked --bin followers-etl \
 && rm -rf src cron/src entity/src migration/src
COPY src src
COPY cron/src cron/src
COPY entity/src entity/src
COPY migration/src migration/src
# COPY keeps the files' times, older than the empty crates' build: touch them.
RUN touch src/main.rs src/lib.rs cron/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
 && cargo build --release --locked --bin followers-etl

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --create-home etl
COPY --from=build /src/target/release/followers-etl /usr/local/bin/followers-etl
WORKDIR /app
USER etl
ENV TABLES_DIR=/app/tables HTTP_ADDR=0.0.0.0:9188
EXPOSE 9188
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9188 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["followers-etl"]
CMD ["serve"]
