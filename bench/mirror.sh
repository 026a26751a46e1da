#!/usr/bin/env bash
# bench/mirror.sh: bench/anchor.sh with SHAPE=subscribers: the subscribers mirror of
# docs/mirrors.md (a configured `[[mirror]]`: composite key, seven columns, a header
# in another order with an extra column), `followers-etl --config FILE sync --mirror
# subscribers` against the hand-written anchor adapted to its columns, in the same
# run. Every setting of anchor.sh applies (see its header); ROWS defaults to 1000000.
#
#   bash bench/mirror.sh                      # 1M rows ×3
#   REPEAT=1 BIN=target/release/followers-etl bash bench/mirror.sh
exec env SHAPE=subscribers bash "$(dirname "${BASH_SOURCE[0]}")/anchor.sh" "$@"
