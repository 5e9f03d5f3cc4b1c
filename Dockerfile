# syntax=docker/dockerfile:1.7
# One image with every duijie binary, the one charts/duijie deploys (image.repository):
#   /usr/local/bin/duijie-{court,procuratorate,police,petition,mediation,audit,console}
#   /usr/local/bin/duijie-bus (migrations, `declare`), /usr/local/bin/duijie (operators' CLI)
# Build:  docker build -t ghcr.io/duijie/duijie:0.1.0 .
# The migrations are compiled into the binaries (sqlx::migrate!); configuration comes from
# DUIJIE_CONFIG_DIR/base.yaml and DUIJIE_* variables (the chart mounts them).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# protoc and the google/*.proto includes come from the protoc-bin-vendored crate: no system
# package is needed. The workspace is copied whole (migrations/, proto/, vendor/ are read at
# compile time); .dockerignore keeps target/ and .git out.
COPY . .
ENV CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p duijie-court -p duijie-procuratorate -p duijie-police -p duijie-petition \
      -p duijie-mediation -p duijie-audit -p duijie-console -p duijie-busctl -p duijie-cli \
 && mkdir -p /out \
 && for b in duijie-court duijie-procuratorate duijie-police duijie-petition duijie-mediation \
             duijie-audit duijie-console duijie-bus duijie; do \
      install -m 0755 "target/release/$b" "/out/$b"; \
    done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 duijie \
 && useradd --system --uid 10001 --gid duijie --home-dir /nonexistent --shell /usr/sbin/nologin duijie \
 && mkdir -p /etc/duijie
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
ENV DUIJIE_CONFIG_DIR=/etc/duijie/config
# 50051 gRPC (mutual TLS), 8081 gRPC health (plaintext), 9464 metrics, 8080 the console (HTTPS)
EXPOSE 50051 8081 9464 8080
# The chart sets the command per service: /usr/local/bin/duijie-<service>.
CMD ["/usr/local/bin/duijie-court"]
