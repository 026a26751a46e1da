#!/usr/bin/env bash
# bench/anchor.sh: `followers-etl sync` against the fixed hand-written anchor of
# issue 8 (`psql \copy` into an UNLOGGED staging table + INSERT … ON CONFLICT +
# DELETE … NOT EXISTS + TRUNCATE), in the same run, alternating which side goes
# first, each repetition in fresh databases. Prints a table and prepends it,
# with the machine's description, to bench/RESULTS.md (OUT=- prints only).
#
#   bash bench/anchor.sh                                  # 1M rows ×3, then 10M rows ×1
#   ROWS=1000000 REPEAT=1 bash bench/anchor.sh            # quicker
#   BIN=/path/to/followers-etl bash bench/anchor.sh       # skip the build
#
# Settings (environment):
#   BIN                 agent binary; default: `cargo build --release` with
#                       CARGO_TARGET_DIR (default target/)
#   ROWS                "1000000" (default "1000000 10000000")
#   REPEAT              repetitions at the first ROWS value (default 3); the median is reported
#   REPEAT_LARGE        repetitions at the other ROWS values (default 1)
#   ANCHOR_LARGE        1: also run the anchor at the other ROWS values (default 0: at 10M
#                       rows both sides' databases need about 3 GB each)
#   AGENT_ENV           extra settings for the agent, e.g. "WORKER_POOL_GOROUTINES=2 BATCH_SIZE=20000"
#   OUT                 file to prepend the report to (default bench/RESULTS.md; - for none)
#   BENCH_DATABASE_URL  admin connection (default postgres://postgres@127.0.0.1:5432/postgres)
#
# Data (awk, deterministic, not timed): v1.csv, header `email,full_name`, ROWS rows
# `user{i}@example.com,"Zoë Müller, ""Z{i}"" Ñandú {i%97}"` (UTF-8, commas and quotes
# inside quoted names); v2.csv: v1 with 1% renamed (i%100 == 1), 1% removed
# (i%100 == 50) and 1% added (user{ROWS+1 … ROWS+ROWS/100}).
#
# Scenarios, per side and repetition, in a fresh database (tables: the anchor's
# DDL from the issue; the agent's from `followers-etl migrate`, not timed):
#   initial    empty followers -> v1 (timed)
#   change     after `VACUUM ANALYZE followers` and CHECKPOINT (not timed, both
#              sides), v1 -> v2 (timed), WAL records/bytes from pg_stat_wal
#              around it (pg_stat_wal is server-wide: run it on a quiet server)
#   identical  v2 again (timed; the agent skips it by hash, the anchor redoes it)
# The agent's time is the whole process (`/usr/bin/time -v`, which also gives
# its peak RSS); its per-stage durations come from `status --json` (sync_runs.stages).
# Every timed step is checked: followers must equal the file (count and checksum).
set -euo pipefail

ROWS=${ROWS:-"1000000 10000000"}
REPEAT=${REPEAT:-3}
REPEAT_LARGE=${REPEAT_LARGE:-1}
ANCHOR_LARGE=${ANCHOR_LARGE:-0}
AGENT_ENV=${AGENT_ENV:-}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/bench/RESULTS.md}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'anchor.sh: %s\n' "$*" >&2; exit 1; }
command -v psql >/dev/null || die "psql is required"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is required (apt-get install time)"

if [[ -z ${BIN:-} ]]; then
  target=${CARGO_TARGET_DIR:-target}
  [[ $target = /* ]] || target=$ROOT/$target
  log "building the agent (CARGO_TARGET_DIR=$target)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --release -q)
  BIN=$target/release/followers-etl
fi
[[ -x $BIN ]] || die "BIN=$BIN is not an executable"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fetl_anchor.XXXXXX")
DB_PREFIX=fetl_anchor_$$_
admin() { psql "$BENCH_DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_db() { admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null; }
cleanup() {
  local status=$? db
  trap - EXIT INT TERM
  for db in $(admin -c "SELECT datname FROM pg_database WHERE datname LIKE '${DB_PREFIX}%'" 2>/dev/null || true); do
    drop_db "$db" 2>/dev/null || true
  done
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
admin -c 'SELECT 1' >/dev/null || die "cannot connect to BENCH_DATABASE_URL"

db_url() {
  local url=${BENCH_DATABASE_URL%%\?*} query=""
  [[ $BENCH_DATABASE_URL == *\?* ]] && query="?${BENCH_DATABASE_URL#*\?}"
  local scheme=${url%%://*} rest=${url#*://}
  [[ $rest == */* ]] && rest=${rest%%/*}
  printf '%s://%s/%s%s' "$scheme" "$rest" "$1" "$query"
}

gen() { # rows variant(1|2) file
  awk -v n="$1" -v v="$2" 'BEGIN {
    print "email,full_name"
    for (i = 1; i <= n; i++) {
      if (v == 2 && i % 100 == 50) continue
      if (v == 2 && i % 100 == 1) printf "user%d@example.com,\"Zoë Renamed, \"\"Z%d\"\" Ñandú %d\"\n", i, i, i % 97
      else printf "user%d@example.com,\"Zoë Müller, \"\"Z%d\"\" Ñandú %d\"\n", i, i, i % 97
    }
    if (v == 2) for (i = n + 1; i <= n + int(n / 100); i++) printf "user%d@example.com,\"Zoë Müller, \"\"Z%d\"\" Ñandú %d\"\n", i, i, i % 97
  }' >"$3"
}

checksum_sql="SELECT count(*) || ' ' || coalesce(sum(hashtext(email || ',' || full_name)::bigint), 0) FROM"
expected_checksum() { # file
  local db=${DB_PREFIX}expect
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  psql "$(db_url "$db")" -X -q -At -v ON_ERROR_STOP=1 <<SQL
CREATE UNLOGGED TABLE f (email text, full_name text);
\copy f FROM '$1' WITH (FORMAT csv, HEADER true)
$checksum_sql f;
SQL
  drop_db "$db"
}
check_content() { # url expected label
  local got
  got=$(psql "$1" -X -q -At -v ON_ERROR_STOP=1 -c "$checksum_sql public.followers")
  [[ $got == "$2" ]] || die "$3: followers differs from the file ('$got', expected '$2')"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
wal() { psql "$1" -X -q -At -F ' ' -c 'SELECT wal_records, wal_bytes FROM pg_stat_wal'; }
# pg_stat_wal counts the whole server's WAL: on a shared server other sessions add
# to it. When pg_waldump can read the server's pg_wal (run as root or postgres on
# the server's machine), the records of the sync's own transaction are counted too:
# the one whose xid is the xmin of a renamed follower (user1), between two LSNs.
PG_WAL=$(admin -c 'SHOW data_directory' 2>/dev/null)/pg_wal
WALDUMP=$(ls /usr/lib/postgresql/*/bin/pg_waldump 2>/dev/null | tail -1 || true)
lsn() { psql "$1" -X -q -At -c 'SELECT pg_current_wal_insert_lsn()'; }
txn_records() { # url lsn0 lsn1 -> records of the transaction that last wrote user1's row
  local xid
  [[ -n $WALDUMP && -r $PG_WAL ]] || { printf -- '-'; return; }
  xid=$(psql "$1" -X -q -At -c "SELECT xmin FROM public.followers WHERE email = 'user1@example.com'")
  "$WALDUMP" -p "$PG_WAL" -s "$2" -e "$3" -x "$xid" 2>/dev/null | wc -l || printf -- '-'
}
settle() { psql "$1" -X -q -At -c 'VACUUM ANALYZE public.followers' -c 'CHECKPOINT' >/dev/null; }

anchor_setup() { # url
  psql "$1" -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE followers (email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL, modified_at timestamp NOT NULL);
CREATE UNLOGGED TABLE staging_followers (email varchar(255), full_name varchar(255), load_id uuid);
SQL
}

anchor_sync() { # url file -> seconds (the issue's SQL, verbatim)
  local t0 t1
  t0=$(now)
  psql "$1" -X -q -v ON_ERROR_STOP=1 >"$TMP/anchor.out" 2>&1 <<SQL || { cat "$TMP/anchor.out" >&2; die "anchor failed"; }
\copy staging_followers(email, full_name) FROM '$2' WITH (FORMAT csv, HEADER true)
BEGIN;
INSERT INTO followers (email, full_name, modified_at)
  SELECT email, full_name, now() FROM staging_followers
  ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name, modified_at = EXCLUDED.modified_at
  WHERE followers.full_name IS DISTINCT FROM EXCLUDED.full_name;
DELETE FROM followers f WHERE NOT EXISTS (SELECT 1 FROM staging_followers s WHERE s.email = f.email);
TRUNCATE staging_followers;
COMMIT;
SQL
  t1=$(now)
  elapsed "$t0" "$t1"
}

agent() { # url file extra-args... ; leaves $TMP/agent.out, $TMP/agent.time
  local url=$1 file=$2
  shift 2
  (cd "$TMP" && env -u DSN -u CONFIG_FILE DATABASE_URL="$url" TABLES_DIR="$TMP" CSV_FILE="$(basename "$file")" \
    HTTP_ADDR=off LOG_LEVEL=warn $AGENT_ENV "$BIN" "$@")
}

agent_sync() { # url file expect_outcome -> seconds; $TMP/rss_kib, $TMP/stages
  local url=$1 file=$TMP/followers.csv t0 t1 rc=0
  # One CSV_FILE, replaced by each new export, as in production (not timed).
  # A fresh file is only read once it has settled (WATCH_DEBOUNCE, 2 s by default):
  # wait that out before the clock starts.
  cmp -s "$2" "$file" || { cp "$2" "$file" && sleep 2.5; }
  local try
  for try in 1 2 3 4 5; do
    rc=0
    t0=$(now)
    /usr/bin/time -v -o "$TMP/agent.time" env -u DSN -u CONFIG_FILE DATABASE_URL="$url" TABLES_DIR="$TMP" \
      CSV_FILE="$(basename "$file")" HTTP_ADDR=off LOG_LEVEL=info LOG_FORMAT=json $AGENT_ENV \
      "$BIN" sync --file "$file" --allow-mass-delete --json >"$TMP/agent.out" 2>"$TMP/agent.err" || rc=$?
    t1=$(now)
    # A shared server out of connections is not the agent's failure: try again.
    grep -q 'too many clients' "$TMP/agent.err" || break
    log "  the server has no connection left; retrying in 5 s"
    sleep 5
  done
  if [[ $rc -ne 0 || $(cat "$TMP/agent.out") != *"\"outcome\":\"$3\""* ]]; then
    cat "$TMP/agent.out" "$TMP/agent.err" >&2
    die "agent sync of $(basename "$file") did not end $3 (exit code $rc)"
  fi
  awk -F': ' '/Maximum resident set size/ { print $2 }' "$TMP/agent.time" >"$TMP/rss_kib"
  agent "$url" "$file" status --json --limit 1 2>/dev/null \
    | tr -d '\n ' | sed -n 's/.*"stages":\({[^}]*}\).*/\1/p' | tr -d '"{}' >"$TMP/stages" || true
  if [[ ! -s $TMP/stages ]]; then # no sync_runs.stages: the run's own log lines
    grep -o '"message":"[^"]*","[a-z]*":"\?[^,}"]*' "$TMP/agent.err" \
      | sed -n 's/"message":"stage \([a-z_]*\) done","seconds":\([0-9.]*\)/\1:\2/p; s/"message":"merge steps (seconds)","steps":"\([^"]*\)/\1/p' \
      | tr '=' ':' | tr ' ' ',' | paste -sd, >"$TMP/stages" || true
    cp "$TMP/agent.err" "$TMP/last_agent.err"
  fi
  [[ -s $TMP/stages ]] || echo "-" >"$TMP/stages"
  elapsed "$t0" "$t1"
}

record() { echo "$*" >>"$TMP/results"; }

run_side() { # side rows rep
  local side=$1 rows=$2 rep=$3 db url s w0 w1 l0
  db=${DB_PREFIX}${side}_${rows}_${rep}
  url=$(db_url "$db")
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  if [[ $side == anchor ]]; then anchor_setup "$url"; else agent "$url" "$V1" migrate >/dev/null 2>&1 || die "migrate failed"; fi
  psql "$url" -X -q -c CHECKPOINT >/dev/null
  for scenario in initial change identical; do
    local file=$V2 expect=$SUM2
    [[ $scenario == initial ]] && { file=$V1; expect=$SUM1; }
    [[ $scenario == change ]] && settle "$url"
    w0=$(wal "$url")
    l0=$(lsn "$url")
    if [[ $side == anchor ]]; then
      s=$(anchor_sync "$url" "$file")
      record "$rows $scenario $side $s $(wal_delta "$w0" "$(wal "$url")") - - $(txn "$url" "$scenario" "$l0")"
    else
      local outcome=synced
      [[ $scenario == identical ]] && outcome=skipped
      s=$(agent_sync "$url" "$file" "$outcome")
      record "$rows $scenario $side $s $(wal_delta "$w0" "$(wal "$url")") $(cat "$TMP/rss_kib") $(cat "$TMP/stages") $(txn "$url" "$scenario" "$l0")"
    fi
    check_content "$url" "$expect" "$side $scenario ($rows rows)"
    log "  $rows rows rep $rep $side $scenario ${s}s"
  done
  drop_db "$db"
}
txn() { # url scenario lsn0 -> the change transaction's own WAL records, else -
  if [[ $2 == change ]]; then txn_records "$1" "$3" "$(lsn "$1")"; else printf -- '-'; fi
}
wal_delta() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%d %d", y[1] - x[1], y[2] - x[2] }'; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { printf "-"; exit } if (NR % 2) printf "%s", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$TMP/results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%FT%TZ)
first=1
for rows in $ROWS; do
  [[ $rows =~ ^[1-9][0-9]*$ ]] || die "ROWS must hold positive integers"
  V1=$TMP/v1_$rows.csv V2=$TMP/v2_$rows.csv
  log "generating $rows rows"
  gen "$rows" 1 "$V1"
  gen "$rows" 2 "$V2"
  SUM1=$(expected_checksum "$V1")
  SUM2=$(expected_checksum "$V2")
  reps=$REPEAT sides="anchor agent"
  if ((first == 0)); then
    reps=$REPEAT_LARGE
    [[ $ANCHOR_LARGE == 1 ]] || sides="agent"
  fi
  for rep in $(seq 1 "$reps"); do
    # Alternate which side goes first.
    order=$sides
    ((rep % 2)) || order=$(echo "$sides" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for side in $order; do run_side "$side" "$rows" "$rep"; done
  done
  rm -f "$V1" "$V2" "$TMP/followers.csv"
  first=0
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------
col() { # rows scenario side field -> median
  awk -v r="$1" -v s="$2" -v d="$3" -v f="$4" '$1 == r && $2 == s && $3 == d { print $f }' "$TMP/results" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) printf "-"; else printf "%.3f", a / b }'; }
report() {
  printf '| rows | scenario | anchor s | agent s | agent/anchor | anchor rows/s | agent rows/s | anchor WAL records | agent WAL records | ratio | anchor WAL MB | agent WAL MB | agent peak RSS MiB | anchor txn WAL records | agent txn WAL records | ratio |\n'
  printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
  for rows in $ROWS; do
    for scenario in initial change identical; do
      local a g ar gr ab gb rss n=$rows
      [[ $scenario != initial ]] && n=$((rows + rows / 100 - rows / 100))
      a=$(col "$rows" "$scenario" anchor 4) g=$(col "$rows" "$scenario" agent 4)
      ar=$(col "$rows" "$scenario" anchor 5) gr=$(col "$rows" "$scenario" agent 5)
      ab=$(col "$rows" "$scenario" anchor 6) gb=$(col "$rows" "$scenario" agent 6)
      local at gt
      at=$(col "$rows" "$scenario" anchor 9) gt=$(col "$rows" "$scenario" agent 9)
      rss=$(awk -v r="$rows" -v s="$scenario" '$1 == r && $2 == s && $3 == "agent" && $7 > m { m = $7 } END { printf "%.1f", m / 1024 }' "$TMP/results")
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$rows" "$scenario" "$a" "$g" "$(ratio "$g" "$a")" \
        "$(awk -v n="$n" -v t="$a" 'BEGIN { if (t == "-") printf "-"; else printf "%.0f", n / t }')" \
        "$(awk -v n="$n" -v t="$g" 'BEGIN { printf "%.0f", n / t }')" \
        "$ar" "$gr" "$(ratio "$gr" "$ar")" \
        "$(awk -v b="$ab" 'BEGIN { if (b == "-") printf "-"; else printf "%.1f", b / 1048576 }')" \
        "$(awk -v b="$gb" 'BEGIN { printf "%.1f", b / 1048576 }')" "$rss" "$at" "$gt" "$(ratio "$gt" "$at")"
    done
  done
  printf '\nPer run (seconds; server-wide WAL records and bytes; agent peak RSS KiB; agent stages in seconds from `status --json`; the change transaction'"'"'s own WAL records from pg_waldump):\n\n```\n'
  sort -k1,1n -k2,2 -k3,3 "$TMP/results"
  printf '```\n'
}
{
  printf '## Anchor run %s\n\n' "$started"
  printf '```\nROWS="%s" REPEAT=%s REPEAT_LARGE=%s ANCHOR_LARGE=%s AGENT_ENV="%s" bash bench/anchor.sh\n```\n\n' "$ROWS" "$REPEAT" "$REPEAT_LARGE" "$ANCHOR_LARGE" "$AGENT_ENV"
  printf -- '- Agent: %s (commit %s)\n' "$BIN" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  printf -- '- Machine: %s cores (%s), %s GiB RAM; %s; server %s\n' "$(nproc)" \
    "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" "$(free -g | awk '/Mem:/ { print $2 }')" \
    "$(psql --version)" "$(admin -c 'SHOW server_version')"
  printf -- '- Load average (1, 5, 15 min) before: %s; after: %s\n' "$load_before" "$load_after"
  printf -- '- Medians of %s repetitions at the first size, %s at the others; peak RSS is the maximum.\n\n' "$REPEAT" "$REPEAT_LARGE"
  report
  echo
} >"$TMP/report.md"
cat "$TMP/report.md"
if [[ $OUT != - ]]; then
  { head -n 2 "$OUT"; cat "$TMP/report.md"; tail -n +3 "$OUT"; } >"$TMP/out.md" && cp "$TMP/out.md" "$OUT"
  log "prepended to $OUT"
fi
