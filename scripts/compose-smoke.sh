#!/usr/bin/env bash
# End-to-end smoke test of the shipped Dockerfile, docker-compose.yml and .env.example
# (docs/development.md#docker-smoke-test). In a copy of the repository (your .env and ./tables are not
# touched), with `cp .env.example .env` as the quick start says, it:
#   1. builds the image and starts the stack, and waits for both health checks;
#   2. checks the start-up sync through psql in the db container;
#   3. renames a new file into ./tables and waits until it is synced;
#   4. reads /metrics from the host;
#   5. lets the agent refuse a file that deletes almost everyone, approves it with
#      `exec agent followers-etl sync --allow-mass-delete`, and reads `status`;
#   6. restarts the agent with only DSN, then only DATABASE_URL, in .env (each naming
#      its own database on the db service) and checks each is the one synced;
#   7. stops the agent and checks its exit code is 0; tears everything down (volumes too).
# COMPOSE picks the spelling ("docker compose" or "docker-compose"; default: the first
# that works). Needs a running Docker daemon and the base images (scripts/docker-standins.sh
# builds them where no registry is reachable). One run at a time (fixed project name, so
# the image's cached layers are reused).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
project=followers-etl-smoke

if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi

say() { echo "compose-smoke: $*" >&2; }
work="$(mktemp -d)"
c() { (cd "$work" && "${compose[@]}" -p "$project" "$@"); }
failed() {
  say "FAILED: $*"
  c ps >&2 || true
  c logs --tail 60 >&2 || true
  exit 1
}
cleanup() {
  c down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: polls every second until COMMAND succeeds.
wait_for() {
  local secs="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || failed "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}

healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(c ps -q "$1")")" = healthy ]; }
sql() { c exec -T db psql -U followers -d "${2:-followers}" -tAc "$1"; }
sql_is() { [ "$(sql "$1" "${3:-followers}")" = "$2" ]; }
http() { curl -fsS "http://127.0.0.1:$port$1"; }
# Writes CSV text to a temporary name in ./tables and renames it into place.
publish() {
  printf '%s' "$1" >"$work/tables/.incoming.tmp"
  mv "$work/tables/.incoming.tmp" "$work/tables/example.csv"
}

tar -C "$repo" --exclude=./target --exclude=./.git --exclude=./.env -c . | tar -C "$work" -x
cp "$work/.env.example" "$work/.env"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "HTTP_PORT=$port" >>"$work/.env"
say "using ${compose[*]}; project $project in $work; /metrics on 127.0.0.1:$port"

# 1. Build and start.
c down -v --remove-orphans >/dev/null 2>&1 || true
started=$SECONDS
c build agent >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; failed "image build"; }
say "image built in $((SECONDS - started))s"
c up -d || failed "up"
wait_for 120 "db healthy" healthy db
wait_for 120 "agent healthy" healthy agent
say "both services healthy"

# 2. The start-up sync, seen from the database.
rows=$(($(wc -l <"$work/tables/example.csv") - 1))
wait_for 60 "start-up sync of $rows rows" sql_is "SELECT count(*) FROM followers" "$rows"
sql_is "SELECT outcome FROM etl_info_schema.sync_runs WHERE trigger = 'start'" synced \
  || failed "the start-up run is not recorded as synced"
say "start-up sync: $rows followers"

# 3. A new export renamed into place.
publish "$(cat "$work/tables/example.csv")
new.follower@example.com,New Follower
"
wait_for 60 "the renamed file synced" sql_is \
  "SELECT count(*) FROM followers WHERE email = 'new.follower@example.com'" 1
sql_is "SELECT count(*) FROM followers" "$((rows + 1))" || failed "wrong follower count after the rename"
say "renamed file synced: $((rows + 1)) followers"

# 4. Metrics from the host.
metrics="$(http /metrics)" || failed "GET /metrics"
for want in 'followers_etl_runs_total{outcome="synced"} 2' 'followers_etl_run_duration_seconds_bucket{' \
  '# HELP followers_etl_run_in_progress' "followers_etl_followers $((rows + 1))"; do
  grep -qF "$want" <<<"$metrics" || failed "/metrics lacks $want"
done
http /readyz >/dev/null || failed "/readyz"
say "/metrics and /readyz answer"

# 5. A refused run, approved by the operator inside the container.
publish "email,full_name
new.follower@example.com,New Follower
"
wait_for 60 "the watch run refused" sql_is \
  "SELECT outcome FROM etl_info_schema.sync_runs ORDER BY started_at DESC LIMIT 1" refused
sql_is "SELECT count(*) FROM followers" "$((rows + 1))" || failed "a refused run changed followers"
c exec -T agent followers-etl status | grep -q "REFUSED" || failed "status does not show the refusal"
c exec -T agent followers-etl sync --allow-mass-delete || failed "sync --allow-mass-delete in the container"
sql_is "SELECT count(*) FROM followers" 1 || failed "the approved run did not sync"
say "refused run approved with exec agent followers-etl sync --allow-mass-delete"

# 6. Only DSN, then only DATABASE_URL, in .env: each reaches its own database.
for setup in DSN DATABASE_URL; do
  db="via_$(tr '[:upper:]' '[:lower:]' <<<"$setup")"
  sql "CREATE DATABASE $db" >/dev/null
  cp "$work/.env.example" "$work/.env"
  printf 'HTTP_PORT=%s\n%s=postgres://followers:followers@db:5432/%s\n' "$port" "$setup" "$db" >>"$work/.env"
  c up -d agent >/dev/null 2>&1 || failed "restarting the agent with $setup"
  wait_for 120 "the start-up sync into $db ($setup)" sql_is "SELECT count(*) FROM followers" 1 "$db"
  say "$setup only: synced into database $db"
done

# 7. A clean stop.
agent="$(c ps -q agent)"
c stop agent >/dev/null 2>&1 || failed "stop"
code="$(docker inspect -f '{{.State.ExitCode}}' "$agent")"
[ "$code" = 0 ] || failed "the agent exited with $code on stop"
say "agent stopped with exit code 0"
say "passed in $((SECONDS - started))s"
