#!/usr/bin/env bash
# bench/anchor.sh: `followers-etl sync` against the fixed hand-written anchor of
# issue 8 (`psql \copy` into an UNLOGGED staging table + INSERT … ON CONFLICT +
# DELETE … NOT EXISTS + TRUNCATE), in the same run, rotating which side goes
# first, each repetition in fresh databases. Prints a table and prepends it,
# with the machine's description, to bench/RESULTS.md (OUT=- prints only).
#
#   bash bench/anchor.sh                                  # 1M rows ×3, then 10M rows ×1
#   ROWS=1000000 REPEAT=1 bash bench/anchor.sh            # quicker
#   BIN=/path/to/followers-etl bash bench/anchor.sh       # skip the build
#   BASE_BIN=/path/to/main/followers-etl ROWS=1000000 bash bench/anchor.sh   # and main's binary
#   bash bench/mirror.sh                                  # SHAPE=subscribers (a configured mirror)
#
# Settings (environment):
#   BIN                 agent binary; default: `cargo build --release` with
#                       CARGO_TARGET_DIR (default target/)
#   BASE_BIN            a second agent binary (e.g. main's, built from its own checkout):
#                       each repetition also runs every scenario with it (side `base`), and
#                       the table adds its times, its ratio to the anchor and agent/base
#   SHAPE               followers (default: the built-in mirror, CSV_FILE) or subscribers
#                       (a configured `[[mirror]]`, see below; bench/mirror.sh sets it)
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
# SHAPE=subscribers: the subscribers mirror of docs/mirrors.md (account_id bigint, email,
# full_name text ≤ 255 from the header `Full Name`, plan text nullable, signed_up date,
# opted_in boolean, balance numeric nullable; key (account_id, email); modified_column
# modified_at), the header in another order with an extra column:
# `email,plan,Full Name,signed_up,account_id,referrer,balance,opted_in`. Row i: email
# user{ceil(i/2)}@example.com and account_id 1000 + i%2 (each email under two accounts, so
# only the pair is a key), the name as above, plan empty (NULL) when i%5 == 0 else
# basic/pro/team, signed_up {2000+i%25}-{1+i%12}-{1+i%28}, opted_in i%3 == 0, balance empty
# (NULL) when i%7 == 0 else {i%100000}.{i%100, two digits}, referrer ref{i%13}. v2: 1%
# updated (i%100 == 1; by (i/100)%4 the name, plan to NULL, balance (NULL to a value where
# it was NULL) or opted_in), 1% removed, 1% added, as above. The agent: a config file with
# that `[[mirror]]` (table crm.subscribers, created by the first sync) and `followers-etl
# --config FILE sync --mirror subscribers` (CSV_FILE unset); the anchor: the same SQL
# adapted to the columns (\copy into an UNLOGGED staging table in the file's column order,
# INSERT … ON CONFLICT (account_id, email) DO UPDATE … WHERE (…) IS DISTINCT FROM (…),
# DELETE … NOT EXISTS, TRUNCATE), its table with the key as primary key.
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
# Every timed step is checked: the table must equal the file (count and a checksum
# over every mirrored column, NULLs told apart).
set -euo pipefail

SHAPE=${SHAPE:-followers}
case $SHAPE in
  followers) ROWS=${ROWS:-"1000000 10000000"} ;;
  subscribers) ROWS=${ROWS:-"1000000"} ;;
  *) printf 'anchor.sh: SHAPE must be followers or subscribers\n' >&2; exit 1 ;;
esac
REPEAT=${REPEAT:-3}
REPEAT_LARGE=${REPEAT_LARGE:-1}
ANCHOR_LARGE=${ANCHOR_LARGE:-0}
AGENT_ENV=${AGENT_ENV:-}
BASE_BIN=${BASE_BIN:-}
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
[[ -z $BASE_BIN || -x $BASE_BIN ]] || die "BASE_BIN=$BASE_BIN is not an executable"
# The agent runs in the data's directory: a relative path is the caller's.
BIN=$(realpath "$BIN")
[[ -z $BASE_BIN ]] || BASE_BIN=$(realpath "$BASE_BIN")

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

# --- the shapes ----------------------------------------------------------------
# Each shape defines: gen ROWS VARIANT FILE; TABLE; CSV (the agent's file name);
# checksum_sql (ending in FROM, the table follows); expect_ddl (a table `f` the
# file is copied into to compute the expected checksum: the file's columns in its
# order, typed as the table's); PROBE (a WHERE clause naming a row the change
# updates, for its transaction's WAL); anchor_setup URL; anchor_sql FILE (the
# anchor's script); agent_env (the agent's own variables), agent_args (its options
# before the command), sync_args and status_args (after `sync` and `status`), one a line.
if [[ $SHAPE == followers ]]; then
  TABLE=public.followers CSV=followers.csv PROBE="email = 'user1@example.com'"
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
  expect_ddl='CREATE UNLOGGED TABLE f (email text, full_name text);'
  anchor_setup() { # url
    psql "$1" -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE followers (email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL, modified_at timestamp NOT NULL);
CREATE UNLOGGED TABLE staging_followers (email varchar(255), full_name varchar(255), load_id uuid);
SQL
  }
  anchor_sql() { # file (the issue's SQL, verbatim)
    cat <<SQL
\copy staging_followers(email, full_name) FROM '$1' WITH (FORMAT csv, HEADER true)
BEGIN;
INSERT INTO followers (email, full_name, modified_at)
  SELECT email, full_name, now() FROM staging_followers
  ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name, modified_at = EXCLUDED.modified_at
  WHERE followers.full_name IS DISTINCT FROM EXCLUDED.full_name;
DELETE FROM followers f WHERE NOT EXISTS (SELECT 1 FROM staging_followers s WHERE s.email = f.email);
TRUNCATE staging_followers;
COMMIT;
SQL
  }
  agent_env() { printf 'CSV_FILE=%s' "$CSV"; }
  agent_args() { :; }                          # before the command
  sync_args() { printf -- '--file\n%s\n' "$TMP/$CSV"; }
  status_args() { :; }
else
  TABLE=crm.subscribers CSV=subscribers.csv PROBE="account_id = 1001 AND email = 'user1@example.com'"
  gen() { # rows variant(1|2) file
    awk -v n="$1" -v v="$2" '
      function row(i, changed,   name, plan, balance, opted, k) {
        k = int(i / 100) % 4
        name = "Zoë Müller"
        plan = (i % 5 == 0) ? "" : (i % 3 == 0 ? "basic" : (i % 3 == 1 ? "pro" : "team"))
        balance = (i % 7 == 0) ? "" : sprintf("%d.%02d", i % 100000, i % 100)
        opted = (i % 3 == 0) ? "true" : "false"
        if (changed && k == 0) name = "Zoë Renamed"
        if (changed && k == 1) plan = ""
        if (changed && k == 2) balance = sprintf("%d.%02d", i % 100000 + 1, i % 100)
        if (changed && k == 3) opted = (opted == "true") ? "false" : "true"
        printf "user%d@example.com,%s,\"%s, \"\"Z%d\"\" Ñandú %d\",%04d-%02d-%02d,%d,ref%d,%s,%s\n",
          int((i + 1) / 2), plan, name, i, i % 97, 2000 + i % 25, 1 + i % 12, 1 + i % 28, 1000 + i % 2,
          i % 13, balance, opted
      }
      BEGIN {
        print "email,plan,Full Name,signed_up,account_id,referrer,balance,opted_in"
        for (i = 1; i <= n; i++) {
          if (v == 2 && i % 100 == 50) continue
          row(i, v == 2 && i % 100 == 1)
        }
        if (v == 2) for (i = n + 1; i <= n + int(n / 100); i++) row(i, 0)
      }' >"$3"
  }
  checksum_sql="SELECT count(*) || ' ' || coalesce(sum(hashtext(concat_ws('|', account_id, email, full_name,
    coalesce(plan, '\\N'), signed_up, opted_in, coalesce(balance::text, '\\N')))::bigint), 0) FROM"
  expect_ddl='CREATE UNLOGGED TABLE f (email text, plan text, full_name text, signed_up date,
    account_id bigint, referrer text, balance numeric, opted_in boolean);'
  anchor_setup() { # url
    psql "$1" -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE SCHEMA crm;
CREATE TABLE crm.subscribers (account_id bigint NOT NULL, email varchar(255) NOT NULL,
  full_name varchar(255) NOT NULL, plan text, signed_up date NOT NULL, opted_in boolean NOT NULL,
  balance numeric, modified_at timestamp NOT NULL, PRIMARY KEY (account_id, email));
CREATE UNLOGGED TABLE crm.staging_subscribers (email varchar(255), plan text, full_name varchar(255),
  signed_up date, account_id bigint, referrer text, balance numeric, opted_in boolean, load_id uuid);
SQL
  }
  anchor_sql() { # file (the followers anchor, adapted to the columns)
    cat <<SQL
\copy crm.staging_subscribers(email, plan, full_name, signed_up, account_id, referrer, balance, opted_in) FROM '$1' WITH (FORMAT csv, HEADER true)
BEGIN;
INSERT INTO crm.subscribers AS t (account_id, email, full_name, plan, signed_up, opted_in, balance, modified_at)
  SELECT account_id, email, full_name, plan, signed_up, opted_in, balance, now() FROM crm.staging_subscribers
  ON CONFLICT (account_id, email) DO UPDATE SET full_name = EXCLUDED.full_name, plan = EXCLUDED.plan,
    signed_up = EXCLUDED.signed_up, opted_in = EXCLUDED.opted_in, balance = EXCLUDED.balance,
    modified_at = EXCLUDED.modified_at
  WHERE (t.full_name, t.plan, t.signed_up, t.opted_in, t.balance)
    IS DISTINCT FROM (EXCLUDED.full_name, EXCLUDED.plan, EXCLUDED.signed_up, EXCLUDED.opted_in, EXCLUDED.balance);
DELETE FROM crm.subscribers t WHERE NOT EXISTS
  (SELECT 1 FROM crm.staging_subscribers s WHERE s.account_id = t.account_id AND s.email = t.email);
TRUNCATE crm.staging_subscribers;
COMMIT;
SQL
  }
  cat >"$TMP/mirrors.toml" <<'TOML'
[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = "crm.subscribers"
key = ["account_id", "email"]
modified_column = "modified_at"
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email",      type = "email" },
  { name = "full_name",  type = "text", max_length = 255, source = "Full Name" },
  { name = "plan",       type = "text", nullable = true },
  { name = "signed_up",  type = "date" },
  { name = "opted_in",   type = "boolean" },
  { name = "balance",    type = "numeric", nullable = true },
]
TOML
  agent_env() { :; }                           # CSV_FILE unset: no built-in mirror
  agent_args() { printf -- '--config\n%s\n' "$TMP/mirrors.toml"; }
  sync_args() { printf -- '--mirror\nsubscribers\n'; }
  status_args() { sync_args; }
fi

expected_checksum() { # file
  local db=${DB_PREFIX}expect
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  psql "$(db_url "$db")" -X -q -At -v ON_ERROR_STOP=1 <<SQL
$expect_ddl
\copy f FROM '$1' WITH (FORMAT csv, HEADER true)
$checksum_sql f;
SQL
  drop_db "$db"
}
check_content() { # url expected label
  local got
  got=$(psql "$1" -X -q -At -v ON_ERROR_STOP=1 -c "$checksum_sql $TABLE")
  [[ $got == "$2" ]] || die "$3: $TABLE differs from the file ('$got', expected '$2')"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
wal() { psql "$1" -X -q -At -F ' ' -c 'SELECT wal_records, wal_bytes FROM pg_stat_wal'; }
# pg_stat_wal counts the whole server's WAL: on a shared server other sessions add
# to it. When pg_waldump can read the server's pg_wal (run as root or postgres on
# the server's machine), the records of the sync's own transaction are counted too:
# the one whose xid is the xmin of a changed row (PROBE), between two LSNs.
PG_WAL=$(admin -c 'SHOW data_directory' 2>/dev/null)/pg_wal
WALDUMP=$(ls /usr/lib/postgresql/*/bin/pg_waldump 2>/dev/null | tail -1 || true)
lsn() { psql "$1" -X -q -At -c 'SELECT pg_current_wal_insert_lsn()'; }
txn_records() { # url lsn0 lsn1 -> records of the transaction that last wrote the PROBE row
  local xid
  [[ -n $WALDUMP && -r $PG_WAL ]] || { printf -- '-'; return; }
  xid=$(psql "$1" -X -q -At -c "SELECT xmin FROM $TABLE WHERE $PROBE")
  # pg_waldump ends with an error at the end of the WAL it was given: count what it printed.
  { "$WALDUMP" -p "$PG_WAL" -s "$2" -e "$3" -x "$xid" 2>/dev/null || true; } | wc -l
}
settle() { psql "$1" -X -q -At -c "VACUUM ANALYZE $TABLE" -c 'CHECKPOINT' >/dev/null; }

anchor_sync() { # url file -> seconds
  local t0 t1
  anchor_sql "$2" >"$TMP/anchor.sql"
  t0=$(now)
  psql "$1" -X -q -v ON_ERROR_STOP=1 -f "$TMP/anchor.sql" >"$TMP/anchor.out" 2>&1 || { cat "$TMP/anchor.out" >&2; die "anchor failed"; }
  t1=$(now)
  elapsed "$t0" "$t1"
}

agent() { # bin url extra-args... (not timed: migrate, status)
  local bin=$1 url=$2 a=()
  shift 2
  mapfile -t a < <(agent_args)
  (cd "$TMP" && env -u DSN -u CONFIG_FILE -u CSV_FILE DATABASE_URL="$url" TABLES_DIR="$TMP" $(agent_env) \
    HTTP_ADDR=off LOG_LEVEL=warn $AGENT_ENV "$bin" "${a[@]}" "$@")
}

agent_sync() { # bin url file expect_outcome -> seconds; $TMP/rss_kib, $TMP/stages
  local bin=$1 url=$2 file=$TMP/$CSV t0 t1 rc=0 a=() s=()
  mapfile -t a < <(agent_args)
  mapfile -t s < <(sync_args)
  # One file, replaced by each new export, as in production (not timed).
  # A fresh file is only read once it has settled (WATCH_DEBOUNCE, 2 s by default):
  # wait that out before the clock starts. (Since the settle rule counts only the
  # quiet time the process itself observed, docs/sync.md, a one-shot `sync` waits
  # WATCH_DEBOUNCE inside the timed run anyway: the report shows that `settle`
  # stage and the ratio without it.)
  cmp -s "$3" "$file" || { cp "$3" "$file" && sleep 2.5; }
  local try
  for try in 1 2 3 4 5; do
    rc=0
    t0=$(now)
    /usr/bin/time -v -o "$TMP/agent.time" env -u DSN -u CONFIG_FILE -u CSV_FILE DATABASE_URL="$url" TABLES_DIR="$TMP" \
      $(agent_env) HTTP_ADDR=off LOG_LEVEL=info LOG_FORMAT=json $AGENT_ENV \
      "$bin" "${a[@]}" sync "${s[@]}" --allow-mass-delete --json >"$TMP/agent.out" 2>"$TMP/agent.err" || rc=$?
    t1=$(now)
    # A shared server out of connections is not the agent's failure: try again.
    grep -q 'too many clients' "$TMP/agent.err" || break
    log "  the server has no connection left; retrying in 5 s"
    sleep 5
  done
  if [[ $rc -ne 0 || $(cat "$TMP/agent.out") != *"\"outcome\":\"$4\""* ]]; then
    cat "$TMP/agent.out" "$TMP/agent.err" >&2
    die "$bin sync of $(basename "$3") did not end $4 (exit code $rc)"
  fi
  awk -F': ' '/Maximum resident set size/ { print $2 }' "$TMP/agent.time" >"$TMP/rss_kib"
  mapfile -t s < <(status_args)
  agent "$bin" "$url" status --json --limit 1 "${s[@]}" 2>/dev/null \
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

run_side() { # side(anchor|agent|base) rows rep
  local side=$1 rows=$2 rep=$3 db url s w0 w1 l0 bin=$BIN
  [[ $side == base ]] && bin=$BASE_BIN
  db=${DB_PREFIX}${side}_${rows}_${rep}
  url=$(db_url "$db")
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  if [[ $side == anchor ]]; then anchor_setup "$url"; else agent "$bin" "$url" migrate >/dev/null 2>&1 || die "migrate ($side) failed"; fi
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
      s=$(agent_sync "$bin" "$url" "$file" "$outcome")
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
  log "generating $rows rows ($SHAPE)"
  gen "$rows" 1 "$V1"
  gen "$rows" 2 "$V2"
  SUM1=$(expected_checksum "$V1")
  SUM2=$(expected_checksum "$V2")
  reps=$REPEAT sides="anchor agent${BASE_BIN:+ base}"
  if ((first == 0)); then
    reps=$REPEAT_LARGE
    sides="agent${BASE_BIN:+ base}"
    [[ $ANCHOR_LARGE == 1 ]] && sides="anchor $sides"
  fi
  for rep in $(seq 1 "$reps"); do
    # Rotate which side goes first (two sides: alternate; three: each side takes
    # each place once in three repetitions).
    order=$(echo "$sides" | awk -v r="$rep" '{ for (i = 0; i < NF; i++) printf "%s ", $((i + r - 1) % NF + 1) }')
    for side in $order; do run_side "$side" "$rows" "$rep"; done
  done
  rm -f "$V1" "$V2" "$TMP/$CSV"
  first=0
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------
col() { # rows scenario side field -> median
  awk -v r="$1" -v s="$2" -v d="$3" -v f="$4" '$1 == r && $2 == s && $3 == d { print $f }' "$TMP/results" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) printf "-"; else printf "%.3f", a / b }'; }
per_s() { awk -v n="$1" -v t="$2" 'BEGIN { if (t == "-" || t == 0) printf "-"; else printf "%.0f", n / t }'; }
mib() { awk -v b="$1" 'BEGIN { if (b == "-") printf "-"; else printf "%.1f", b / 1048576 }'; }
settle_s() { # rows scenario side -> median seconds of the run's `settle` stage
  awk -v r="$1" -v s="$2" -v d="$3" '$1 == r && $2 == s && $3 == d && match($8, /settle:[0-9.]+/) {
    printf "%.3f\n", substr($8, RSTART + 7, RLENGTH - 7) }' "$TMP/results" | median
}
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") printf "-"; else printf "%.3f", a - b }'; }
peak_rss() { # rows scenario side -> MiB
  awk -v r="$1" -v s="$2" -v d="$3" '$1 == r && $2 == s && $3 == d && $7 > m { m = $7 } END { printf "%.1f", m / 1024 }' "$TMP/results"
}
report() {
  local base_head="" base_sep=""
  if [[ -n $BASE_BIN ]]; then
    base_head=' base s | base/anchor | agent/base | base rows/s | base WAL records | base WAL MB | base peak RSS MiB | base txn WAL records | base settle s | (base − settle)/anchor |'
    base_sep='---|---|---|---|---|---|---|---|---|---|'
  fi
  printf '| rows | scenario | anchor s | agent s | agent/anchor | anchor rows/s | agent rows/s | anchor WAL records | agent WAL records | ratio | anchor WAL MB | agent WAL MB | agent peak RSS MiB | anchor txn WAL records | agent txn WAL records | ratio | agent settle s | (agent − settle)/anchor |%s\n' "$base_head"
  printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|%s\n' "$base_sep"
  for rows in $ROWS; do
    for scenario in initial change identical; do
      local a g ar gr ab gb at gt
      a=$(col "$rows" "$scenario" anchor 4) g=$(col "$rows" "$scenario" agent 4)
      ar=$(col "$rows" "$scenario" anchor 5) gr=$(col "$rows" "$scenario" agent 5)
      ab=$(col "$rows" "$scenario" anchor 6) gb=$(col "$rows" "$scenario" agent 6)
      at=$(col "$rows" "$scenario" anchor 9) gt=$(col "$rows" "$scenario" agent 9)
      local gs
      gs=$(settle_s "$rows" "$scenario" agent)
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' "$rows" "$scenario" "$a" "$g" "$(ratio "$g" "$a")" \
        "$(per_s "$rows" "$a")" "$(per_s "$rows" "$g")" "$ar" "$gr" "$(ratio "$gr" "$ar")" \
        "$(mib "$ab")" "$(mib "$gb")" "$(peak_rss "$rows" "$scenario" agent)" "$at" "$gt" "$(ratio "$gt" "$at")" \
        "$gs" "$(ratio "$(minus "$g" "$gs")" "$a")"
      if [[ -n $BASE_BIN ]]; then
        local b br bb bt bs
        b=$(col "$rows" "$scenario" base 4) br=$(col "$rows" "$scenario" base 5)
        bb=$(col "$rows" "$scenario" base 6) bt=$(col "$rows" "$scenario" base 9)
        bs=$(settle_s "$rows" "$scenario" base)
        printf ' %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' "$b" "$(ratio "$b" "$a")" "$(ratio "$g" "$b")" "$(per_s "$rows" "$b")" \
          "$br" "$(mib "$bb")" "$(peak_rss "$rows" "$scenario" base)" "$bt" "$bs" "$(ratio "$(minus "$b" "$bs")" "$a")"
      fi
      printf '\n'
    done
  done
  printf '\nPer run (seconds; server-wide WAL records and bytes; agent peak RSS KiB; agent stages in seconds from `status --json`; the change transaction'"'"'s own WAL records from pg_waldump):\n\n```\n'
  sort -k1,1n -k2,2 -k3,3 "$TMP/results"
  printf '```\n'
}
commit_of() { git -C "$(dirname "$1")" rev-parse --short HEAD 2>/dev/null || echo '?'; }
{
  printf '## Anchor run %s%s\n\n' "$started" "$([[ $SHAPE == followers ]] || printf ' (%s shape)' "$SHAPE")"
  printf '```\n%sROWS="%s" REPEAT=%s REPEAT_LARGE=%s ANCHOR_LARGE=%s AGENT_ENV="%s"%s bash bench/anchor.sh\n```\n\n' \
    "$([[ $SHAPE == followers ]] || printf 'SHAPE=%s ' "$SHAPE")" "$ROWS" "$REPEAT" "$REPEAT_LARGE" "$ANCHOR_LARGE" "$AGENT_ENV" \
    "${BASE_BIN:+ BASE_BIN=$BASE_BIN}"
  printf -- '- Agent: %s (commit %s)\n' "$BIN" "$(commit_of "$BIN")"
  [[ -z $BASE_BIN ]] || printf -- '- Base (side `base`): %s (commit %s)\n' "$BASE_BIN" "$(commit_of "$BASE_BIN")"
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
