#!/usr/bin/env bash
# bench/journal.sh: what the journal (docs/operations.md#journal-revert-and-history)
# costs a sync that changes 1% of a 1M-row table: the same binary, the same
# files, the same machine, in the same run, with the journal on (defaults) and
# off (JOURNAL_KEEP_RUNS=0, which also skips the journaling statements and uses
# the merge's plain UPDATE/INSERT/DELETE), alternating which side goes first.
#
#   bench/journal.sh                               # defaults below
#   ROWS=100000 REPEAT=1 bench/journal.sh
#   BIN=/path/to/followers-etl bench/journal.sh    # skip the build
#
# Settings: BIN (default: `cargo build --release` into CARGO_TARGET_DIR or
# target/), ROWS (1000000), REPEAT (3, the median is reported), WORKERS (4),
# BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres; the script
# creates and drops databases fetl_jbench_<pid>_*).
#
# Data: v1.csv = ROWS rows `user{i}@example.com,User {i}`; v2.csv = v1 with
# 0.5% of the names changed (i % 200 == 1), 0.25% removed (i % 400 == 0) and
# 0.25% new rows appended: 1% of the rows change.
#
# Per side and repetition, in a fresh migrated database: sync v1 (not timed),
# VACUUM ANALYZE + CHECKPOINT, then the timed `sync` of v2 (the whole process),
# and the WAL it wrote (pg_current_wal_lsn() before and after, nothing else runs
# in that database). Output: median seconds and WAL bytes per side, the
# difference, and the journal's share of the sync's time.
set -euo pipefail

ROWS=${ROWS:-1000000}
REPEAT=${REPEAT:-3}
WORKERS=${WORKERS:-4}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'journal.sh: %s\n' "$*" >&2; exit 1; }

for n in ROWS REPEAT WORKERS; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
command -v psql >/dev/null || die "psql is required"
if [[ -z ${BIN:-} ]]; then
  target=${CARGO_TARGET_DIR:-target}
  [[ $target = /* ]] || target=$ROOT/$target
  log "building the agent (CARGO_TARGET_DIR=$target)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --release -q)
  BIN=$target/release/followers-etl
fi
[[ -x $BIN ]] || die "BIN=$BIN is not an executable"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fetl_jbench.XXXXXX")
DB_PREFIX=fetl_jbench_$$_
admin() { psql "$BENCH_DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
  local status=$? db
  trap - EXIT INT TERM
  for db in $(admin -c "SELECT datname FROM pg_database WHERE datname LIKE '${DB_PREFIX}%'" 2>/dev/null || true); do
    admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

db_url() {
  local url=${BENCH_DATABASE_URL%%\?*} query=""
  [[ $BENCH_DATABASE_URL == *\?* ]] && query="?${BENCH_DATABASE_URL#*\?}"
  local scheme=${url%%://*} rest=${url#*://}
  [[ $rest == */* ]] && rest=${rest%%/*}
  printf '%s://%s/%s%s' "$scheme" "$rest" "$1" "$query"
}

log "generating $ROWS rows into $TMP"
awk -v n="$ROWS" 'BEGIN { print "email,full_name"; for (i = 1; i <= n; i++) printf "user%d@example.com,User %d\n", i, i }' >"$TMP/v1.csv"
awk -v n="$ROWS" 'BEGIN {
  print "email,full_name"
  for (i = 1; i <= n; i++) {
    if (i % 400 == 0) continue
    if (i % 200 == 1) printf "user%d@example.com,User %d renamed\n", i, i
    else printf "user%d@example.com,User %d\n", i, i
  }
  for (i = n + 1; i <= n + int(n / 400); i++) printf "user%d@example.com,User %d\n", i, i
}' >"$TMP/v2.csv"
CHANGED=$(( (ROWS + 199) / 200 + ROWS / 400 + ROWS / 400 ))

now() { date +%s.%N; }
sync_file() { # url file keep_runs
  (cd "$TMP" && env -u DSN -u CONFIG_FILE DATABASE_URL="$1" TABLES_DIR="$TMP" CSV_FILE="$(basename "$2")" \
    WORKER_POOL_GOROUTINES="$WORKERS" HTTP_ADDR=off LOG_LEVEL=warn JOURNAL_KEEP_RUNS="$3" ALLOW_FILE_CHANGE=true \
    "$BIN" sync --json >"$TMP/out" 2>"$TMP/err") || { cat "$TMP/out" "$TMP/err" >&2; die "sync of $2 failed"; }
  grep -q '"outcome":"synced"' "$TMP/out" || { cat "$TMP/out" "$TMP/err" >&2; die "sync of $2 not synced"; }
}

: >"$TMP/times"
for rep in $(seq 1 "$REPEAT"); do
  if ((rep % 2)); then sides="on off"; else sides="off on"; fi
  for side in $sides; do
    keep=100; [[ $side == off ]] && keep=0
    db=${DB_PREFIX}${side}_${rep}; url=$(db_url "$db")
    admin -c "CREATE DATABASE \"$db\"" >/dev/null
    sync_file "$url" "$TMP/v1.csv" "$keep"
    psql "$url" -X -q -At -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null
    lsn0=$(psql "$url" -X -q -At -c 'SELECT pg_current_wal_lsn()')
    t0=$(now)
    sync_file "$url" "$TMP/v2.csv" "$keep"
    t1=$(now)
    wal=$(psql "$url" -X -q -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
    journaled=$(sed -n 's/.*"journaled":\([0-9]*\).*/\1/p' "$TMP/out")
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "$side $s $wal $journaled" >>"$TMP/times"
    log "  rep $rep journal $side: ${s}s, WAL $wal bytes, journaled $journaled"
    admin -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
on=$(awk '$1 == "on" { print $2 }' "$TMP/times" | median)
off=$(awk '$1 == "off" { print $2 }' "$TMP/times" | median)
won=$(awk '$1 == "on" { print $3 }' "$TMP/times" | median)
woff=$(awk '$1 == "off" { print $3 }' "$TMP/times" | median)
printf '\n%-8s %10s %14s %10s\n' journal median_s median_wal_bytes journaled
printf '%-8s %10.3f %14d %10s\n' on "$on" "$won" "$(awk '$1 == "on" { print $4; exit }' "$TMP/times")"
printf '%-8s %10.3f %14d %10s\n' off "$off" "$woff" 0
awk -v a="$on" -v b="$off" -v wa="$won" -v wb="$woff" -v c="$CHANGED" 'BEGIN {
  printf "journal cost: %+.3f s (%+.1f%% of the sync without it); WAL %+d bytes (%.0f bytes per changed row, %d rows changed)\n", a - b, (a - b) * 100 / b, wa - wb, (wa - wb) / c, c }'
printf '(ROWS=%s, 1%% changed, WORKERS=%s, REPEAT=%s, median of REPEAT runs; every run listed on stderr)\n' "$ROWS" "$WORKERS" "$REPEAT"
