#!/usr/bin/env bash
# bench/duplicates.sh: how long `followers-etl sync` takes on a file where one
# address has many copies (duplicate resolution, src/pipeline/staging.rs).
#
#   bench/duplicates.sh                                  # build, then time
#   BIN=/path/to/followers-etl bench/duplicates.sh       # time that binary
#   BIN_BEFORE=/path/to/old/followers-etl bench/duplicates.sh   # also time an older build
#
# Settings (environment):
#   BIN                 agent binary; default: `cargo build --release -q` and target/release
#   BIN_BEFORE          optional second binary timed on the same file (e.g. before a change)
#   ROWS                data rows (default 1000000)
#   COPIES              rows that carry the same address dup@example.com (default 100000);
#                       the other ROWS-COPIES rows are distinct
#   WORKERS             WORKER_POOL_GOROUTINES (default 4)
#   TIMEOUT             seconds after which a run is stopped (killed 10 s later) and reported
#                       as not finished (default 1800)
#   BENCH_DATABASE_URL  admin connection (default postgres://postgres@127.0.0.1:5432/postgres);
#                       each run gets a fresh database fetl_dup_<pid>_<n>, dropped afterwards
#
# Each run: `followers-etl migrate` (not timed), then `sync --json` of the file
# into the empty table (timed: the whole process). A run counts only with exit
# code 0, outcome `synced`, inserted = ROWS-COPIES+1 and duplicates = COPIES-1.
set -euo pipefail

ROWS=${ROWS:-1000000}
COPIES=${COPIES:-100000}
WORKERS=${WORKERS:-4}
TIMEOUT=${TIMEOUT:-1800}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'duplicates.sh: %s\n' "$*" >&2; exit 1; }
[[ $COPIES -ge 1 && $COPIES -le $ROWS ]] || die "need 1 <= COPIES <= ROWS"

if [[ -z ${BIN:-} ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q)
    BIN=$ROOT/target/release/followers-etl
fi

WORK=$(mktemp -d)
DBS=()
cleanup() {
    for db in "${DBS[@]}"; do psql "$BENCH_DATABASE_URL" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir "$WORK/tables"
# Every (ROWS/COPIES)-th row is the duplicated address, so its copies are spread
# over the whole file.
awk -v rows="$ROWS" -v copies="$COPIES" 'BEGIN {
    print "email,full_name"; step = int(rows / copies); made = 0
    for (i = 1; i <= rows; i++) {
        if (made < copies && (i % step == 0 || rows - i < copies - made)) { print "dup@example.com,Copy " i; made++ }
        else print "user" i "@example.com,User " i
    }
}' > "$WORK/tables/dups.csv"
log "file: $ROWS rows, $COPIES copies of dup@example.com ($(du -h "$WORK/tables/dups.csv" | cut -f1))"

n=0
time_one() {
    local label=$1 bin=$2 db url out start end code
    n=$((n + 1)); db="fetl_dup_$$_$n"; DBS+=("$db")
    psql "$BENCH_DATABASE_URL" -qAtc "CREATE DATABASE $db" >/dev/null
    url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$BENCH_DATABASE_URL" "$db")
    local -a env=(DATABASE_URL="$url" TABLES_DIR="$WORK/tables" CSV_FILE=dups.csv HTTP_ADDR=off LOG_LEVEL=error
                  WORKER_POOL_GOROUTINES="$WORKERS" DSN= CONFIG_FILE=)
    env "${env[@]}" "$bin" migrate >/dev/null
    log "$label: sync"
    start=$(date +%s.%N)
    set +e
    # A stop signal does not interrupt a statement in flight (the run waits for
    # it, then compensates): -k kills the run 10 s after TIMEOUT.
    out=$(env "${env[@]}" timeout -k 10 "$TIMEOUT" "$bin" sync --json 2>/dev/null)
    code=$?
    set -e
    end=$(date +%s.%N)
    if [[ $code -eq 124 || $code -eq 137 ]]; then
        printf '%-8s %10s  %s\n' "$label" ">$TIMEOUT" "stopped after TIMEOUT (not finished)"
        return
    fi
    python3 - "$label" "$code" "$start" "$end" "$ROWS" "$COPIES" "$out" <<'PY'
import json, sys
label, code, start, end, rows, copies, out = sys.argv[1:]
rows, copies = int(rows), int(copies)
s = json.loads(out) if out.strip() else {}
ok = (code == "0" and s.get("outcome") == "synced" and s.get("inserted") == rows - copies + 1
      and s.get("duplicates") == copies - 1)
print(f"{label:<8} {float(end) - float(start):10.2f}  {'ok' if ok else 'WRONG: exit ' + code + ' ' + out}")
PY
}

printf '%-8s %10s  %s\n' "binary" "sync_s" "check"
[[ -n ${BIN_BEFORE:-} ]] && time_one before "$BIN_BEFORE"
time_one after "$BIN"
printf '(ROWS=%s COPIES=%s WORKERS=%s)\n' "$ROWS" "$COPIES" "$WORKERS"
