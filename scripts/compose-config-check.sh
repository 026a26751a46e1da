#!/usr/bin/env bash
# Renders docker-compose.yml with .env.example for each way a user configures the
# database, with docker-compose 1.29 (`docker-compose`) and, where installed, Compose v2
# (`docker compose`), and checks what the agent container would get:
#   1. nothing set: DEFAULT_DATABASE_URL points at the bundled db service, and neither
#      DATABASE_URL nor DSN is set;
#   2. DATABASE_URL in .env: passed through unchanged;
#   3. only the old service's DSN in .env (keyword/value form): passed through unchanged.
# With a followers-etl binary (argument 1, or target/debug/followers-etl if built), it
# also loads each rendered environment with the agent's own configuration (`schedule`,
# which validates every variable and needs no database). Needs no Docker daemon; installs
# docker-compose from Debian if missing (as root). Used by .ci/run; see docs/development.md#compose-configuration-check.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$repo/target/debug/followers-etl}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac

say() { echo "compose-config-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

if ! command -v docker-compose >/dev/null; then
  say "installing docker-compose"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker-compose >/dev/null
fi
# docker-compose's own interpreter has PyYAML (Debian's python3-yaml).
python=/usr/bin/python3
"$python" -c 'import yaml' 2>/dev/null || python=python3
"$python" -c 'import yaml' || fail "no Python with PyYAML to read the rendered configuration"

tools=("docker-compose")
if docker compose version >/dev/null 2>&1; then
  tools+=("docker compose")
else
  say "Compose v2 (docker compose) is not installed here; checking docker-compose only"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$repo/docker-compose.yml" "$repo/.env.example" "$work/"
mkdir -p "$work/tables"

# The agent's environment as KEY=VALUE lines, from the rendered configuration on stdin.
agent_env() {
  "$python" -c '
import sys, yaml
env = yaml.safe_load(sys.stdin)["services"]["agent"].get("environment") or {}
if isinstance(env, list):
    env = dict(item.split("=", 1) for item in env)
for k, v in sorted(env.items()):
    print(f"{k}={v}")
'
}

bundled="postgres://followers:followers@db:5432/followers"
url="postgres://app:s3cret@pg.example.com:5432/app?sslmode=require"
dsn="host=legacy-db port=5432 user=app password=s3cret dbname=app sslmode=disable"

check() {
  local tool="$1" setup="$2" extra="$3" want="$4" absent="$5"
  cp "$work/.env.example" "$work/.env"
  [ -z "$extra" ] || printf '%s\n' "$extra" >>"$work/.env"
  local rendered
  rendered="$(cd "$work" && $tool config 2>"$work/stderr")" \
    || fail "$tool config ($setup): $(cat "$work/stderr")"
  local env
  env="$(agent_env <<<"$rendered")" || fail "$tool config ($setup): cannot read the agent's environment"
  # Compose escapes a literal $ as $$ in its output.
  env="${env//\$\$/\$}"
  grep -qxF -- "$want" <<<"$env" || fail "$tool ($setup): expected $want in the agent's environment, got:
$env"
  local var
  for var in $absent; do
    if grep -q "^$var=" <<<"$env"; then
      fail "$tool ($setup): $var should not be set, got: $(grep "^$var=" <<<"$env")"
    fi
  done
  if [ -x "$bin" ]; then
    # The agent's own configuration must accept what the container gets.
    local -a vars=()
    mapfile -t vars <<<"$env"
    local out
    out="$(cd "$work" && env -i PATH="$PATH" "${vars[@]}" TABLES_DIR="$work/tables" \
      "$bin" schedule --count 1 2>&1)" || fail "$tool ($setup): followers-etl rejects the rendered environment: $out"
  fi
  say "ok: $tool, $setup"
}

for tool in "${tools[@]}"; do
  check "$tool" "nothing set (bundled db)" "" "DEFAULT_DATABASE_URL=$bundled" "DATABASE_URL DSN"
  check "$tool" "DATABASE_URL in .env" "DATABASE_URL=$url" "DATABASE_URL=$url" "DSN"
  check "$tool" "DSN in .env" "DSN=$dsn" "DSN=$dsn" "DATABASE_URL"
  check "$tool" "own db password" "POSTGRES_PASSWORD=pa55" \
    "DEFAULT_DATABASE_URL=postgres://followers:pa55@db:5432/followers" "DATABASE_URL DSN"
done
[ -x "$bin" ] || say "note: no followers-etl binary at $bin; the agent's own validation was not run"
