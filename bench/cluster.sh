#!/usr/bin/env bash
# Cluster mode (issue #11): the same workloads on 1, 2 and 3 Tandem nodes sharing one
# PostgreSQL database (a fresh database per run, clients of every room spread evenly over the
# nodes), and on a single SQLite node as the baseline, in one run. Reports deliveries/s,
# latency, cross-node propagation (send on node A, receipt on node B), CPU per delivery on
# each node, and PostgreSQL's own CPU. Writes bench-results/cluster-<stamp>/.
#
#   bench/cluster.sh                          # fanout and rooms, full sizes (~5 min)
#   WORKLOADS=fanout,fanout-5k SECS=5 bench/cluster.sh
#   PG=postgres://postgres@127.0.0.1:5432/postgres bench/cluster.sh   # the server to use
set -euo pipefail
export TANDEM_MAX_UPDATES_PER_SEC=0 TANDEM_MAX_STATE_REQUESTS_PER_MIN=0 TANDEM_MAX_STATE_BYTES_PER_MIN=0
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
SECS=${SECS:-10}
WORKLOADS=${WORKLOADS:-fanout,fanout-5k,rooms}
NODES=${NODES:-1 2 3}
PG=${PG:-postgres://postgres@127.0.0.1:5432/postgres}
out="bench-results/cluster-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
json="$out/results.jsonl"
cargo build --release --bins
BENCH=target/release/tandem-bench
{
  echo "date: $(date -u +%FT%TZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "tandem: $(git rev-parse --short HEAD) (release build)"
  echo "postgres: $(psql "$PG" -Atc 'show server_version') (synchronous_commit on), on this machine"
  echo "scale: $SCALE, sending window: ${SECS}s"
} | tee "$out/versions.txt"

# CPU seconds of every PostgreSQL process (backends live as long as the nodes' pools).
pg_cpu() {
  local tck; tck=$(getconf CLK_TCK)
  for p in $(pgrep -u postgres); do cat "/proc/$p/stat" 2>/dev/null; done |
    awk -v t="$tck" '{ s += $14 + $15 } END { printf "%.2f", s / t }'
}

PORT=18600
PIDS=()
URLS=()
start_nodes() { # n url-or-empty
  local n=$1 db=$2 i
  PIDS=(); URLS=()
  for i in $(seq "$n"); do
    PORT=$((PORT + 1))
    local flags=(--listen "127.0.0.1:$PORT" --web-dir= --data-dir "$out/data-$PORT")
    [ -n "$db" ] && flags+=(--database-url "$db" --node-id "node-$i")
    target/release/tandem "${flags[@]}" >"$out/node-$PORT.log" 2>&1 &
    PIDS+=($!)
    URLS+=("ws://127.0.0.1:$PORT/ws/{room}")
    for _ in $(seq 100); do
      (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
      sleep 0.1
    done
  done
}
stop_nodes() { kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true; }
join() { local IFS=,; echo "$*"; }

IFS=, read -ra LIST <<<"$WORKLOADS"
for workload in "${LIST[@]}"; do
  echo "== $workload on one SQLite node"
  start_nodes 1 ""
  $BENCH run --label sqlite-1 --url "$(join "${URLS[@]}")" --pid "$(join "${PIDS[@]}")" \
    --workloads "$workload" --scale "$SCALE" --secs "$SECS" --json "$json" >/dev/null || true
  stop_nodes
  for n in $NODES; do
    echo "== $workload on $n node(s) on PostgreSQL"
    db="tandem_bench_$$_$n"
    psql "$PG" -qc "create database $db"
    start_nodes "$n" "${PG%/*}/$db"
    before=$(pg_cpu)
    $BENCH run --label "postgres-$n" --url "$(join "${URLS[@]}")" --pid "$(join "${PIDS[@]}")" \
      --workloads "$workload" --scale "$SCALE" --secs "$SECS" --json "$json" >/dev/null || true
    echo "$workload postgres-$n: PostgreSQL CPU $(awk -v a="$before" -v b="$(pg_cpu)" 'BEGIN { printf "%.2f", b - a }') s" | tee -a "$out/postgres-cpu.txt"
    stop_nodes
    psql "$PG" -qc "drop database $db with (force)"
  done
done
$BENCH report "$json" | tee "$out/report.md"
cat "$out/postgres-cpu.txt" | tee -a "$out/report.md"
echo "results in $out"
