#!/usr/bin/env bash
# The full comparison: the same workloads, in one run, against Tandem (release), the
# reference Node server (@y/websocket-server, in memory and with its LevelDB persistence),
# Hocuspocus (in memory and with its SQLite extension), y-sweet, and the bare-relay ceiling, each
# started fresh on loopback for every workload. Writes bench-results/<stamp>/ with the raw
# JSON lines, versions and report.md (the tables that go into BENCHMARKS.md).
#
#   bench/compare.sh                      # everything, full sizes (~15 min on 2 cores)
#   SCALE=0.2 SECS=5 bench/compare.sh     # smaller and quicker
#   SERVERS="tandem relay" bench/compare.sh
#   EXTRAS=0 ...                          # skip the cold-load, listing and SQLite-ceiling runs
#   MODE=cluster bench/compare.sh         # 1, 2, 3 nodes on PostgreSQL vs one SQLite node
#   (servers: tandem, tandem-normal (--sync normal), tandem-linger (--commit-linger-ms 1.5), baseline, node, node-leveldb,
#    hocuspocus, hocuspocus-sqlite, ysweet, relay)
#   BASELINE_BIN=path/to/older/tandem SERVERS="tandem baseline node" bench/compare.sh
#                                         # before/after figures in the same run
#
# Needs: Rust, Node 18+/npm; y-sweet is installed from crates.io on first use
# (cargo install y-sweet --root bench/.tools, several minutes; SERVERS without ysweet skips it).
set -euo pipefail
# MODE=cluster: several nodes on PostgreSQL instead (bench/cluster.sh, issue #11).
[ "${MODE:-}" = cluster ] && exec "$(dirname "$0")/cluster.sh"
# Load generators send far faster than people type: lift the per-connection update and
# state-request limits (README: Limits) so that every server is measured on the same load.
export TANDEM_MAX_UPDATES_PER_SEC=0 TANDEM_MAX_STATE_REQUESTS_PER_MIN=0 TANDEM_MAX_STATE_BYTES_PER_MIN=0
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
SECS=${SECS:-10}
WORKLOADS=${WORKLOADS:-fanout,fanout-5k,fanout-max,fanout-wide,typing,rooms,presence,idle,storm,durable,bigdoc}
SERVERS=${SERVERS:-tandem tandem-linger node node-leveldb hocuspocus hocuspocus-sqlite ysweet relay}
out="bench-results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
json="$out/results.jsonl"

cargo build --release --bins
BENCH=target/release/tandem-bench
(cd bench/node && npm ci --no-audit --no-fund --silent)
if [[ " $SERVERS " == *" ysweet "* ]] && [ ! -x bench/.tools/bin/y-sweet ]; then
  # --locked: y-sweet 0.9.1 does not build against today's newest dependency versions.
  cargo install y-sweet --locked --root bench/.tools
fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "kernel: $(uname -r)"
  echo "tandem: $(git rev-parse --short HEAD) (release build, --sync full)"
  [ -n "${BASELINE_BIN:-}" ] && echo "baseline: $BASELINE_BIN (an earlier tandem build, same settings)"
  echo "node: $(node --version), @y/websocket-server $(node -p "require('./bench/node/node_modules/@y/websocket-server/package.json').version") (node: in memory; node-leveldb: YPERSISTENCE, y-leveldb $(node -p "require('./bench/node/node_modules/y-leveldb/package.json').version"))"
  echo "hocuspocus: @hocuspocus/server $(node -p "require('./bench/node/node_modules/@hocuspocus/server/package.json').version") (hocuspocus: in memory; hocuspocus-sqlite: @hocuspocus/extension-sqlite, its default debounce 2 s / max 10 s)"
  [ -x bench/.tools/bin/y-sweet ] && echo "y-sweet: $(cargo install --list --root bench/.tools | grep -m1 '^y-sweet') (local directory store)"
  echo "scale: $SCALE, sending window: ${SECS}s"
} | tee "$out/versions.txt"

PORT=18400
PID=""
start() { # label [tandem flags...] -> sets URL, PID, EXTRA
  local label=$1 data="$out/data-$1-$RANDOM"
  shift
  PORT=$((PORT + 1))
  EXTRA=()
  case $label in
    baseline)
      "$BASELINE_BIN" --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= "$@" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/ws/{room}" ;;
    tandem-normal)
      target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= --sync normal "$@" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/ws/{room}" ;;
    tandem)
      target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= "$@" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/ws/{room}" ;;
    tandem-linger)
      target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= --commit-linger-ms 1.5 "$@" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/ws/{room}" ;;
    node)
      HOST=127.0.0.1 PORT=$PORT node bench/node/node_modules/@y/websocket-server/src/server.js >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/{room}" ;;
    node-leveldb)
      HOST=127.0.0.1 PORT=$PORT YPERSISTENCE="$data" node bench/node/node_modules/@y/websocket-server/src/server.js >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/{room}" ;;
    hocuspocus)
      HOST=127.0.0.1 PORT=$PORT node bench/node/hocuspocus.mjs >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/{room}"
      EXTRA=(--framing hocuspocus) ;;
    hocuspocus-sqlite)
      mkdir -p "$data"
      HOST=127.0.0.1 PORT=$PORT HP_SQLITE="$data/hocuspocus.sqlite" node bench/node/hocuspocus.mjs >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/{room}"
      EXTRA=(--framing hocuspocus) ;;
    ysweet)
      mkdir -p "$data"
      bench/.tools/bin/y-sweet serve "$data" --host 127.0.0.1 --port "$PORT" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/doc/ws/{room}"
      EXTRA=(--ysweet "http://127.0.0.1:$PORT") ;;
    relay)
      $BENCH relay --listen "127.0.0.1:$PORT" >"$out/$label.log" 2>&1 &
      URL="ws://127.0.0.1:$PORT/{room}" ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$label did not start"; cat "$out/$label.log"; return 1
}
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

IFS=, read -ra LIST <<<"$WORKLOADS"
for workload in "${LIST[@]}"; do
  for server in $SERVERS; do
    # The relay keeps no documents: a join storm or durability figure means nothing there.
    # The storm and durable workloads fill a document by waiting for echoes, which only
    # Tandem sends (it echoes after the commit); the large-document workload is Tandem's own.
    case "$server:$workload" in
      relay:storm | relay:durable) continue ;;
      hocuspocus*:storm | hocuspocus*:durable | hocuspocus*:bigdoc) continue ;;
      node*:bigdoc | ysweet:bigdoc | relay:bigdoc) continue ;;
    esac
    echo "== $workload on $server"
    flags=()
    # A small compaction threshold, so the large document is compacted early (issue #8).
    [ "$workload" = bigdoc ] && flags=(--compact-bytes 4000000)
    start "$server" "${flags[@]}"
    $BENCH run --label "$server" --url "$URL" --pid "$PID" "${EXTRA[@]}" \
      --workloads "$workload" --scale "$SCALE" --secs "$SECS" --json "$json" >/dev/null || true
    stop
  done
done

# Cold load: a document whose log holds 100,000 updates, opened by a fresh process, before
# and after compaction (Tandem); raw SQLite insert ceiling beside the durable figures.
if [[ " $SERVERS " == *" tandem "* && "${EXTRAS:-1}" != 0 ]]; then
  data="$out/data-cold"
  PORT=$((PORT + 1))
  target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= --compact-updates 1000000000 >"$out/cold.log" 2>&1 &
  PID=$!; sleep 0.5
  $BENCH run --label tandem --url "ws://127.0.0.1:$PORT/ws/{room}" --pid $PID --workloads populate --scale "$SCALE" --json "$json" >/dev/null
  stop
  for phase in "log only (no compaction)" "after compaction"; do
    target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$data" --web-dir= --room-grace-secs 1 >>"$out/cold.log" 2>&1 &
    PID=$!; sleep 0.5
    $BENCH run --label tandem --url "ws://127.0.0.1:$PORT/ws/{room}" --pid $PID --workloads cold \
      --cold-label "cold-load, $phase" --json "$json" >/dev/null
    sleep 3 # the room unloads after 1 s and compacts on the way out
    stop
  done
  # Listing 100,000 documents beside cold room loads (the documents API, issue #10). The
  # short grace and high room cap only keep the 100,000 writes from piling up rooms.
  PORT=$((PORT + 1))
  target/release/tandem --listen "127.0.0.1:$PORT" --data-dir "$out/data-list" --web-dir= \
    --room-grace-secs 0.5 --max-rooms 100000 --sync normal >"$out/list.log" 2>&1 &
  PID=$!; sleep 0.5
  $BENCH run --label tandem --url "ws://127.0.0.1:$PORT/ws/{room}" --pid $PID --workloads list \
    --scale "$SCALE" --json "$json" >/dev/null
  stop
fi
[ "${EXTRAS:-1}" != 0 ] && $BENCH sqlite --dir "$out/sqlite" --secs 3 --json "$json" >/dev/null

$BENCH report "$json" | tee "$out/report.md"
echo "results in $out"
