#!/usr/bin/env bash
# bench/load.sh: wall-clock benchmark of `followers-etl sync` against a plain
# `psql \copy` + SQL baseline, measured in the same run, with ratios printed.
#
# Run (from anywhere; PostgreSQL must be reachable with a role that may
# CREATE/DROP DATABASE and run CHECKPOINT):
#
#   bench/load.sh                                   # defaults below
#   ROWS=100000 REPEAT=1 BATCH_SIZES="5000 10000" bench/load.sh
#   BIN=/path/to/followers-etl bench/load.sh        # skip the build
#
# Settings (environment):
#   BIN                 agent binary; default: build it with
#                       `CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} cargo build --release -q`
#   ROWS                data rows of the first file (default 1000000)
#   BATCH_SIZES         BATCH_SIZE values tried (default "1000 5000 10000 20000 50000")
#   WORKERS             WORKER_POOL_GOROUTINES of the agent (default 4)
#   REPEAT              repetitions; the median is reported (default 3)
#   BENCH_DATABASE_URL  admin connection (default postgres://postgres@127.0.0.1:5432/postgres);
#                       the script creates and drops its own databases fetl_bench_<pid>_*
#
# Data (generated with awk into a temp dir, not timed):
#   v1.csv  header `email,full_name`, ROWS rows `user{i}@example.com,User {i}`
#   v2.csv  v1 with 10% of the names changed (i % 10 == 1), 5% of the rows removed
#           (i % 20 == 0) and 5% new rows (user{ROWS+1..ROWS+ROWS/20}) appended
#
# Scenarios, each repetition in a fresh database whose tables come from
# `followers-etl migrate` (not timed):
#   initial  empty tables -> sync v1 (timed)
#   mixed    then, in the same database, sync v2 (timed; only this sync)
# Before each timed step the script runs CHECKPOINT, and before `mixed` also
# VACUUM ANALYZE (not timed, same for both sides), so that neither side pays for
# the other step's checkpoint or for autovacuum of the freshly loaded table.
#
# Agent, per batch size: `followers-etl sync --file <path> --allow-mass-delete`
# with DATABASE_URL, TABLES_DIR, CSV_FILE, BATCH_SIZE, WORKER_POOL_GOROUTINES=$WORKERS,
# HTTP_ADDR=off, LOG_LEVEL=warn. The time is the whole process: start-up,
# connection, migration check, advisory lock, run bookkeeping, hashing the
# file, reading + validating + normalising every row, COPY into
# staging_followers (UNLOGGED, indexed on (load_id, email)) by $WORKERS
# connections, duplicate check, the merge transaction of src/pipeline/merge.rs
# (UPDATE changed names, INSERT new, DELETE absent, table_status, sync_runs,
# staging cleanup) and commit. A run counts only with exit code 0, outcome
# `synced` and the expected inserted/updated/deleted counts.
#
# Baseline (psql), timed as one `psql -v ON_ERROR_STOP=1` session:
#   CREATE TEMP TABLE load (email varchar(255), full_name varchar(255));  -- no index
#   \copy load (email, full_name) FROM '<csv>' WITH (FORMAT csv, HEADER true)
#   BEGIN; the same UPDATE (only rows whose full_name differs), INSERT of new
#   emails and DELETE of absent emails as merge.rs, joined on email as is; COMMIT;
# It does NOT: validate or normalise rows (the file is already clean), handle
# duplicate emails (a duplicate would break it), protect rejected rows from
# deletion, apply the mass-delete guard, hash the file, take the advisory lock,
# check migrations, or write any run bookkeeping (sync_runs, table_status);
# there is no staging cleanup beyond the temp table dying with the session.
# It is the same for every batch size (it has none) but is run next to every
# agent run, so each row's ratio compares runs made under the same machine load.
#
# After every timed step (not timed) both sides must leave the same followers
# content: count and a checksum of (email, full_name) are compared with the
# expected file content.
#
# Output: a table (scenario, batch size, agent median s, psql median s,
# agent/psql, agent rows/s = data rows of the synced file / agent median),
# then the batch size with the best agent median per scenario. Progress goes
# to stderr, the table to stdout.
set -euo pipefail

ROWS=${ROWS:-1000000}
BATCH_SIZES=${BATCH_SIZES:-"1000 5000 10000 20000 50000"}
WORKERS=${WORKERS:-4}
REPEAT=${REPEAT:-3}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

for n in ROWS WORKERS REPEAT; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
for b in $BATCH_SIZES; do
  [[ $b =~ ^[1-9][0-9]*$ ]] || die "BATCH_SIZES must hold positive integers, got '$b'"
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

# --- temp dir, databases, cleanup -------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fetl_bench.XXXXXX")
DB_PREFIX=fetl_bench_$$_

admin() { psql "$BENCH_DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

drop_db() { admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null; }

cleanup() {
  local status=$? db
  trap - EXIT INT TERM
  for db in $(admin -c "SELECT datname FROM pg_database WHERE datname LIKE '${DB_PREFIX}%'" 2>/dev/null || true); do
    drop_db "$db" 2>/dev/null || printf 'load.sh: could not drop database %s\n' "$db" >&2
  done
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

admin -c 'SELECT 1' >/dev/null || die "cannot connect to BENCH_DATABASE_URL"

# URL of database $1 on the server of BENCH_DATABASE_URL.
db_url() {
  local url=${BENCH_DATABASE_URL%%\?*} query=""
  [[ $BENCH_DATABASE_URL == *\?* ]] && query="?${BENCH_DATABASE_URL#*\?}"
  local scheme=${url%%://*} rest=${url#*://}
  [[ $rest == */* ]] && rest=${rest%%/*}
  printf '%s://%s/%s%s' "$scheme" "$rest" "$1" "$query"
}

# --- data ------------------------------------------------------------------
log "generating $ROWS rows into $TMP"
awk -v n="$ROWS" 'BEGIN {
  print "email,full_name"
  for (i = 1; i <= n; i++) printf "user%d@example.com,User %d\n", i, i
}' >"$TMP/v1.csv"
awk -v n="$ROWS" 'BEGIN {
  print "email,full_name"
  for (i = 1; i <= n; i++) {
    if (i % 20 == 0) continue                              # 5% removed
    if (i % 10 == 1) printf "user%d@example.com,User %d renamed\n", i, i   # 10% renamed
    else printf "user%d@example.com,User %d\n", i, i
  }
  for (i = n + 1; i <= n + int(n / 20); i++) printf "user%d@example.com,User %d\n", i, i   # 5% new
}' >"$TMP/v2.csv"

# Expected counts of the v2 sync.
V1_ROWS=$ROWS
DEL=$((ROWS / 20))
UPD=$(((ROWS + 9) / 10))            # i % 10 == 1 for i in 1..ROWS
INS=$((ROWS / 20))
V2_ROWS=$((ROWS - DEL + INS))
[[ $(($(wc -l <"$TMP/v1.csv") - 1)) -eq $V1_ROWS && $(($(wc -l <"$TMP/v2.csv") - 1)) -eq $V2_ROWS ]] \
  || die "generated files have unexpected sizes"

# Checksum of a file's content, the way `checksum_db` computes it in SQL.
checksum_sql="SELECT count(*) || ' ' || coalesce(sum(hashtext(email || ',' || full_name)::bigint), 0) FROM"
expected_checksum() {
  local db=${DB_PREFIX}expect
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  psql "$(db_url "$db")" -X -q -At -v ON_ERROR_STOP=1 <<SQL
CREATE TEMP TABLE f (email text, full_name text);
\copy f FROM '$1' WITH (FORMAT csv, HEADER true)
$checksum_sql f;
SQL
  drop_db "$db"
}
SUM_V1=$(expected_checksum "$TMP/v1.csv")
SUM_V2=$(expected_checksum "$TMP/v2.csv")

# --- helpers -----------------------------------------------------------------
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

check_content() { # url expected label
  local got
  got=$(psql "$1" -X -q -At -v ON_ERROR_STOP=1 -c "$checksum_sql public.followers")
  [[ $got == "$2" ]] || die "$3: followers content differs from the file (count+checksum '$got', expected '$2')"
}

prepare() { # url: settle before a timed step
  psql "$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2" -c 'CHECKPOINT' >/dev/null
}

new_db() { # name -> migrated database
  admin -c "CREATE DATABASE \"$1\"" >/dev/null
  if ! (cd "$TMP" && env -u DSN -u CONFIG_FILE DATABASE_URL="$(db_url "$1")" TABLES_DIR="$TMP" \
      HTTP_ADDR=off LOG_LEVEL=warn "$BIN" migrate >"$TMP/migrate.log" 2>&1); then
    cat "$TMP/migrate.log" >&2
    die "followers-etl migrate failed on $1"
  fi
}

# agent_sync url file batch expect_inserted expect_updated expect_deleted -> prints seconds
agent_sync() {
  local url=$1 file=$2 batch=$3 t0 t1 rc=0 out
  t0=$(now)
  (cd "$TMP" && env -u DSN -u CONFIG_FILE DATABASE_URL="$url" TABLES_DIR="$TMP" CSV_FILE="$(basename "$file")" \
    BATCH_SIZE="$batch" WORKER_POOL_GOROUTINES="$WORKERS" HTTP_ADDR=off LOG_LEVEL=warn \
    "$BIN" sync --file "$file" --allow-mass-delete --json >"$TMP/agent.out" 2>"$TMP/agent.err") || rc=$?
  t1=$(now)
  out=$(cat "$TMP/agent.out")
  if [[ $rc -ne 0 || $out != *'"outcome":"synced"'* ]]; then
    {
      printf 'load.sh: agent sync of %s (BATCH_SIZE=%s) failed: exit code %s\n' "$(basename "$file")" "$batch" "$rc"
      printf -- '--- stdout ---\n%s\n--- stderr ---\n' "$out"
      cat "$TMP/agent.err"
    } >&2
    exit 1
  fi
  local want
  for want in "\"inserted\":$4" "\"updated\":$5" "\"deleted\":$6"; do
    [[ $out == *"$want"[,}]* ]] || die "agent sync of $(basename "$file"): expected $want, summary: $out"
  done
  elapsed "$t0" "$t1"
}

# psql_sync url file -> prints seconds
psql_sync() {
  local url=$1 file=$2 t0 t1 rc=0
  t0=$(now)
  psql "$url" -X -q -v ON_ERROR_STOP=1 >"$TMP/psql.out" 2>&1 <<SQL || rc=$?
CREATE TEMP TABLE load (email varchar(255), full_name varchar(255));
\copy load (email, full_name) FROM '$file' WITH (FORMAT csv, HEADER true)
BEGIN;
UPDATE public.followers f
   SET full_name = s.full_name, modified_at = (now() AT TIME ZONE 'UTC')
  FROM load s
 WHERE s.email = f.email AND f.full_name IS DISTINCT FROM s.full_name;
INSERT INTO public.followers (email, full_name, modified_at)
SELECT s.email, s.full_name, (now() AT TIME ZONE 'UTC')
  FROM load s
 WHERE NOT EXISTS (SELECT 1 FROM public.followers f WHERE f.email = s.email);
DELETE FROM public.followers f
 WHERE NOT EXISTS (SELECT 1 FROM load s WHERE s.email = f.email);
COMMIT;
SQL
  t1=$(now)
  if [[ $rc -ne 0 ]]; then
    cat "$TMP/psql.out" >&2
    die "psql baseline on $(basename "$file") failed (exit code $rc)"
  fi
  elapsed "$t0" "$t1"
}

# One repetition of both scenarios for one side; appends "scenario batch side seconds".
run_side() { # side batch rep
  local side=$1 batch=$2 rep=$3 db url s
  db=${DB_PREFIX}${side}_${batch}_${rep}
  url=$(db_url "$db")
  new_db "$db"
  prepare "$url" 'SELECT 1'
  if [[ $side == agent ]]; then
    s=$(agent_sync "$url" "$TMP/v1.csv" "$batch" "$V1_ROWS" 0 0)
  else
    s=$(psql_sync "$url" "$TMP/v1.csv")
  fi
  check_content "$url" "$SUM_V1" "$side initial"
  echo "initial $batch $side $s" >>"$TMP/times"
  log "  rep $rep batch $batch $side initial ${s}s"
  prepare "$url" 'VACUUM ANALYZE'
  if [[ $side == agent ]]; then
    s=$(agent_sync "$url" "$TMP/v2.csv" "$batch" "$INS" "$UPD" "$DEL")
  else
    s=$(psql_sync "$url" "$TMP/v2.csv")
  fi
  check_content "$url" "$SUM_V2" "$side mixed"
  echo "mixed $batch $side $s" >>"$TMP/times"
  log "  rep $rep batch $batch $side mixed ${s}s"
  drop_db "$db"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- run -------------------------------------------------------------------
: >"$TMP/times"
started=$(now)
log "agent $BIN; ROWS=$ROWS BATCH_SIZES=\"$BATCH_SIZES\" WORKERS=$WORKERS REPEAT=$REPEAT"
for rep in $(seq 1 "$REPEAT"); do
  log "repetition $rep/$REPEAT"
  for batch in $BATCH_SIZES; do
    # Alternate which side goes first, so neither always runs on a warmer cache.
    if ((rep % 2)); then sides="agent psql"; else sides="psql agent"; fi
    for side in $sides; do run_side "$side" "$batch" "$rep"; done
  done
done
log "done in $(elapsed "$started" "$(now)")s"

# --- report ------------------------------------------------------------------
printf '\n%-8s %10s %14s %13s %11s %12s\n' scenario batch_size agent_median_s psql_median_s agent/psql agent_rows/s
for scenario in initial mixed; do
  if [[ $scenario == initial ]]; then rows=$V1_ROWS; else rows=$V2_ROWS; fi
  for batch in $BATCH_SIZES; do
    a=$(awk -v s="$scenario" -v b="$batch" '$1 == s && $2 == b && $3 == "agent" { print $4 }' "$TMP/times" | median)
    p=$(awk -v s="$scenario" -v b="$batch" '$1 == s && $2 == b && $3 == "psql" { print $4 }' "$TMP/times" | median)
    awk -v s="$scenario" -v b="$batch" -v a="$a" -v p="$p" -v r="$rows" \
      'BEGIN { printf "%-8s %10d %14.3f %13.3f %11.2f %12.0f\n", s, b, a, p, a / p, r / a }'
    echo "$scenario $batch $a" >>"$TMP/medians"
  done
done
echo
for scenario in initial mixed; do
  awk -v s="$scenario" '$1 == s && (best == "" || $3 < best) { best = $3; b = $2 }
    END { printf "best batch size for %-7s: %d (agent median %.3f s)\n", s, b, best }' "$TMP/medians"
done
printf '(ROWS=%s: initial syncs %s rows; mixed syncs %s rows: %s updated, %s inserted, %s deleted; WORKERS=%s, REPEAT=%s, median of REPEAT runs)\n' \
  "$ROWS" "$V1_ROWS" "$V2_ROWS" "$UPD" "$INS" "$DEL" "$WORKERS" "$REPEAT"
