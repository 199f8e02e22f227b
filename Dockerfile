# pgsplit: multi-stage build. The builder needs libclang for pg_query's bindings.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY protocol ./protocol
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgsplit

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 pgsplit
COPY --from=build /src/target/release/pgsplit /usr/local/bin/pgsplit
USER pgsplit
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/pgsplit"]
