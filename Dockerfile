# The croupier image: built with the toolchain CI uses, by the command CI runs
# (scripts/build-release.sh; scripts/check-deploy.sh checks that .ci/run runs every
# command of the build stage), then copied alone into a slim Debian.
#
#   docker build -t croupier-analytics/croupier:0.1.0 .
#   docker run --security-opt seccomp=deploy/seccomp-io_uring.json ...   (io_uring)
#   docker run ...                                                        (epoll fallback)

# The web dashboard's files (dashboard/dist), built by the script CI runs.
FROM node:20.19.2-bookworm-slim AS dashboard
WORKDIR /src
COPY dashboard dashboard
COPY scripts/build-dashboard.sh scripts/build-dashboard.sh
RUN scripts/build-dashboard.sh

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/build-release.sh

FROM debian:12.11-slim
RUN useradd --system --no-create-home --uid 10001 croupier \
 && install -d -o croupier -g croupier /var/lib/croupier
COPY --from=build /src/target/release/croupier /usr/local/bin/croupier
COPY croupier.example.toml /etc/croupier/croupier.toml
COPY --from=dashboard /src/dashboard/dist /usr/share/croupier/dashboard
# The control port serves the dashboard from here (control.dashboard_dir).
ENV CROUPIER_CONTROL__DASHBOARD_DIR=/usr/share/croupier/dashboard
USER croupier
# 8080: data port (ingest); 8081: control port (/metrics, /healthz, /readyz, the API, the dashboard /).
EXPOSE 8080 8081
ENTRYPOINT ["croupier"]
CMD ["run", "--config", "/etc/croupier/croupier.toml"]
