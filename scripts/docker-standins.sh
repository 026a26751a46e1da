#!/usr/bin/env bash
# Builds local images under the names the Dockerfile and docker-compose.yml use
# (debian:bookworm-slim, rust:1-bookworm, postgres:16), for a machine that reaches
# Debian's package mirror and crates.io but no container registry (as the development
# and CI machines). With them, `docker compose up --build` and scripts/compose-smoke.sh
# run the project's real files. See docs/development.md#docker-stand-in-images.
#
#   debian:bookworm-slim  a minimal Debian 12 root file system made by debootstrap
#   rust:1-bookworm       that image plus gcc and this machine's Rust toolchain (rustc/cargo)
#   postgres:16           that image plus Debian's PostgreSQL 15 and a small entry point that
#                         creates the cluster from POSTGRES_USER / POSTGRES_PASSWORD /
#                         POSTGRES_DB on first start, as the official image does
#
# An image that already exists under its name is left alone (pulled or built before);
# `--rebuild` replaces all three. Installs docker.io, docker-compose and debootstrap from
# Debian if missing and starts dockerd if it is not running (needs root). Takes a few
# minutes the first time.
set -euo pipefail

rebuild=false
case "${1:-}" in
  --rebuild) rebuild=true ;;
  "") ;;
  *) echo "usage: $0 [--rebuild]" >&2; exit 2 ;;
esac

say() { echo "docker-standins: $*" >&2; }

need_packages=()
command -v dockerd >/dev/null || need_packages+=(docker.io)
command -v docker-compose >/dev/null || need_packages+=(docker-compose)
command -v debootstrap >/dev/null || need_packages+=(debootstrap)
if [ "${#need_packages[@]}" -gt 0 ]; then
  say "installing ${need_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see /tmp/dockerd.log"; exit 1; }
fi

missing() { $rebuild || ! docker image inspect "$1" >/dev/null 2>&1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# --- debian:bookworm-slim -------------------------------------------------------------
if missing debian:bookworm-slim; then
  mirror="$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
  [ -n "$mirror" ] || mirror="$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  say "debian:bookworm-slim: debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$scratch/rootfs" "$mirror" >/dev/null
  tar -C "$scratch/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
  rm -rf "$scratch/rootfs"
fi

# --- rust:1-bookworm ------------------------------------------------------------------
if missing rust:1-bookworm; then
  sysroot="$(readlink -f "$(rustc --print sysroot)")"
  say "rust:1-bookworm: toolchain $(rustc --version) from $sysroot"
  ctx="$scratch/rust"
  mkdir -p "$ctx/toolchain" "$ctx/certs"
  # The compiler without its documentation (share/ is most of the size).
  for part in bin lib libexec; do
    [ -d "$sysroot/$part" ] && cp -a "$sysroot/$part" "$ctx/toolchain/"
  done
  # CA certificates this machine adds (e.g. for an egress proxy that inspects TLS), so
  # cargo inside the build reaches crates.io as it does here.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:$PATH CARGO_HOME=/usr/local/cargo
DOCKERFILE
  docker build -q -t rust:1-bookworm "$ctx" >/dev/null
fi

# --- postgres:16 ----------------------------------------------------------------------
if missing postgres:16; then
  say "postgres:16: Debian's PostgreSQL 15 with an entry point like the official image's"
  ctx="$scratch/postgres"
  mkdir -p "$ctx"
  cat >"$ctx/entrypoint.sh" <<'ENTRYPOINT'
#!/bin/bash
# First start: a cluster owned by POSTGRES_USER (password POSTGRES_PASSWORD, required for
# TCP clients) and the database POSTGRES_DB. Every start: postgres in the foreground as
# the postgres system user, listening on all interfaces.
set -euo pipefail
user="${POSTGRES_USER:-postgres}"
dbname="${POSTGRES_DB:-$user}"
as_postgres() { runuser -u postgres -- "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$dbname" != postgres ]; then
    as_postgres postgres --single -D "$PGDATA" -c listen_addresses= postgres \
      <<<"CREATE DATABASE \"$dbname\" OWNER \"$user\";" >/dev/null
  fi
fi
exec runuser -u postgres -- "$@" -D "$PGDATA" -c listen_addresses='*'
ENTRYPOINT
  chmod +x "$ctx/entrypoint.sh"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
DOCKERFILE
  docker build -q -t postgres:16 "$ctx" >/dev/null
fi

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E '^(debian:bookworm-slim|rust:1-bookworm|postgres:16) ' >&2
