#!/usr/bin/env bash
# Runs the tokenmeter benchmarks side by side with a Redis peer and prints a summary table.
# Builds nothing: give it a build directory holding tokenmeter-aggregator, tokenmeter-sidecar
# and tokenmeter-bench.
#
#   tests/bench/run.sh [--quick] [--build-dir DIR] [--aggregator PATH] [--sidecar PATH]
#                      [--bench PATH] [--events N] [--sidecar-events N] [--sidecar-rate R]
#                      [--no-everysec] [--keep] [--aggregator-flags "FLAGS"]
#                      [--sidecar-flags "FLAGS"]
#
#   --build-dir   default: <repo>/build (binaries at services/aggregator/tokenmeter-aggregator,
#                 services/sidecar/tokenmeter-sidecar and tests/tokenmeter-bench under it)
#   --quick       CI smoke: 100k events, 3 s phases (< 2 minutes)
#   --events N    ingest events per system (default 2,000,000)
#   --sidecar-events N  events through client -> sidecar -> shard (default 1,000,000)
#   --sidecar-rate R    offered Reserve+Commit pairs/s through the sidecar (default 1,000)
#   --no-everysec skip the Redis appendfsync everysec runs
#   --keep        keep the temporary directory (data dirs, logs, raw results)
#   --aggregator-flags  extra flags for every tokenmeter-aggregator (e.g. "--workers 64");
#                 a --durability given here overrides the default sync
#   --sidecar-flags  extra flags for every tokenmeter-sidecar
#
# Every server it starts (one tokenmeter-aggregator, and for the two-hop benchmarks one
# tokenmeter-sidecar, per benchmark; one or two redis-server per benchmark and fsync setting) listens on 127.0.0.1 on a free port, keeps its data in a fresh
# temporary directory and is stopped by PID. Everything is bounded: each driver stops starting
# work after its phase time, and each driver run is killed after a hard timeout.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD_DIR="$REPO/build"
AGGREGATOR=""
SIDECAR=""
BENCH=""
QUICK=0
EVENTS=""
SIDECAR_EVENTS=""
SIDECAR_RATE=1000
SIDECAR_FLAGS=""
EVERYSEC=1
KEEP=0
AGG_FLAGS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --aggregator) AGGREGATOR="$2"; shift 2 ;;
    --sidecar) SIDECAR="$2"; shift 2 ;;
    --bench) BENCH="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --events) EVENTS="$2"; shift 2 ;;
    --sidecar-events) SIDECAR_EVENTS="$2"; shift 2 ;;
    --sidecar-rate) SIDECAR_RATE="$2"; shift 2 ;;
    --sidecar-flags) SIDECAR_FLAGS="$2"; shift 2 ;;
    --no-everysec) EVERYSEC=0; shift ;;
    --keep) KEEP=1; shift ;;
    --aggregator-flags) AGG_FLAGS="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
AGGREGATOR="${AGGREGATOR:-$BUILD_DIR/services/aggregator/tokenmeter-aggregator}"
SIDECAR="${SIDECAR:-$BUILD_DIR/services/sidecar/tokenmeter-sidecar}"
BENCH="${BENCH:-$BUILD_DIR/tests/tokenmeter-bench}"
for bin in "$AGGREGATOR" "$SIDECAR" "$BENCH"; do
  [[ -x "$bin" ]] || { echo "not found or not executable: $bin" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "redis-server not installed" >&2; exit 2; }

if [[ $QUICK == 1 ]]; then
  EVENTS="${EVENTS:-100000}"; INGEST_MAX=20; REDIS_INGEST_MAX=20
  SIDECAR_EVENTS="${SIDECAR_EVENTS:-50000}"; SIDECAR_MAX=20; SIDECAR_DRAIN=30
  SAT_S=3; PACED_S=3; DRAIN_S=5; HARD_TIMEOUT=60
else
  EVENTS="${EVENTS:-2000000}"; INGEST_MAX=120; REDIS_INGEST_MAX=60
  SIDECAR_EVENTS="${SIDECAR_EVENTS:-1000000}"; SIDECAR_MAX=60; SIDECAR_DRAIN=120
  SAT_S=10; PACED_S=10; DRAIN_S=10; HARD_TIMEOUT=240
fi
# Reserve through the sidecar: also paced at this share of its saturation rate.
SIDECAR_FRACTION=0.1
# Two-hop ingest: client threads x calls in flight x events per call.
RELAY_PRODUCERS=4; RELAY_WINDOW=8; RELAY_BATCH=100
RATE=10000
DURABILITY_FLAG="--durability sync"
[[ "$AGG_FLAGS" == *--durability* ]] && DURABILITY_FLAG=""
IN_FLIGHT=64

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokenmeter-bench.XXXXXX")
RESULTS="$WORK/results.txt"
: > "$RESULTS"
RUNNING_PIDS=()

cleanup() {
  local pid
  for pid in "${RUNNING_PIDS[@]}"; do stop_pid "$pid"; done
  if [[ $KEEP == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Sends SIGTERM to one process we started and waits (bounded) for it; SIGKILL if it lingers.
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=()
  for p in "${RUNNING_PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
  RUNNING_PIDS=("${kept[@]+"${kept[@]}"}")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (bounded) until something accepts connections on 127.0.0.1:$1.
wait_port() {
  local port="$1" pid="$2" i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "process $pid died; see $WORK" >&2; return 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $port after 30 s" >&2
  return 1
}

# start_aggregator NAME -> sets AGG_PID, AGG_PORT, AGG_DIR
start_aggregator() {
  AGG_DIR="$WORK/$1"
  AGG_PORT=$(free_port)
  mkdir -p "$AGG_DIR"
  "$AGGREGATOR" --listen "127.0.0.1:$AGG_PORT" --data-dir "$AGG_DIR/data" --shard-index 0 \
    --shard-count 1 --policy-file "$REPO/tests/bench/policies.yaml" $DURABILITY_FLAG \
    $AGG_FLAGS >"$AGG_DIR/aggregator.log" 2>&1 &
  AGG_PID=$!
  RUNNING_PIDS+=("$AGG_PID")
  wait_port "$AGG_PORT" "$AGG_PID"
}

# start_redis NAME FSYNC -> sets REDIS_PID, REDIS_PORT, REDIS_DIR
start_redis() {
  REDIS_DIR="$WORK/$1"
  REDIS_PORT=$(free_port)
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" \
    --appendonly yes --appendfsync "$2" --daemonize no --logfile "$REDIS_DIR/redis.log" \
    --protected-mode yes >/dev/null 2>&1 &
  REDIS_PID=$!
  RUNNING_PIDS+=("$REDIS_PID")
  wait_port "$REDIS_PORT" "$REDIS_PID"
}

# start_sidecar NAME SHARD_PORT -> sets SIDECAR_PID, SIDECAR_PORT, SIDECAR_DIR, SIDECAR_STARTED
start_sidecar() {
  SIDECAR_DIR="$WORK/$1"
  SIDECAR_PORT=$(free_port)
  mkdir -p "$SIDECAR_DIR"
  SIDECAR_STARTED=$(date +%s.%N)
  "$SIDECAR" --listen "127.0.0.1:$SIDECAR_PORT" --data-dir "$SIDECAR_DIR/queue" \
    --aggregators "127.0.0.1:$2" $SIDECAR_FLAGS >"$SIDECAR_DIR/sidecar.log" 2>&1 &
  SIDECAR_PID=$!
  RUNNING_PIDS+=("$SIDECAR_PID")
  wait_port "$SIDECAR_PORT" "$SIDECAR_PID"
}

# record_idle_rss KEY PID STARTED: records KEY.idle_rss_kb (VmRSS) and KEY.idle_anon_kb
# (RssAnon: without the mapped code of the binary and its libraries) of a process that got no
# traffic yet, 2 s after it started.
record_idle_rss() {
  local left
  left=$(awk -v s="$3" -v now="$(date +%s.%N)" 'BEGIN {d = s + 2 - now; print (d > 0 ? d : 0)}')
  sleep "$left"  # A measurement point, not synchronisation: the process is already serving.
  record "$1.idle_rss_kb" "$(awk '/^VmRSS:/ {print $2}' "/proc/$2/status")"
  record "$1.idle_anon_kb" "$(awk '/^RssAnon:/ {print $2}' "/proc/$2/status")"
}

vm_hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
dir_bytes() { du -sb "$1" | awk '{print $1}'; }
files_bytes() { find "$1" -name "$2" -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
record() { echo "RESULT $1 $2" >>"$RESULTS"; }

# run_bench ARGS...: runs the driver with a hard timeout, shows its output, keeps RESULT lines.
run_bench() {
  local out="$WORK/bench-$RANDOM.out"
  timeout --signal=KILL "$HARD_TIMEOUT" "$BENCH" "$@" >"$out" 2>&1 || echo "(driver failed: $*)"
  grep -v '^RESULT ' "$out" || true
  grep '^RESULT ' "$out" >>"$RESULTS" || true
}

echo "== tokenmeter benchmarks vs Redis ($(date -u +%FT%TZ), $(nproc) cores," \
  "load average: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "   events=$EVENTS in batches of 1000, 4 producers x window 8; quota: $IN_FLIGHT in flight," \
  "${SAT_S}s saturation, ${RATE}/s paced for ${PACED_S}s, then half the saturation rate for" \
  "${PACED_S}s; Redis $(redis-server --version | awk '{print $3}')"
echo "   aggregator: --shard-count 1 $DURABILITY_FLAG $AGG_FLAGS (other flags default);" \
  "sidecar: ${SIDECAR_FLAGS:-default flags} (Report acks after its queue fsync)"
echo "   two hops: $SIDECAR_EVENTS events, $RELAY_PRODUCERS clients x $RELAY_WINDOW calls in" \
  "flight x $RELAY_BATCH events; Reserve via sidecar paced at ${SIDECAR_RATE}/s and at" \
  "$SIDECAR_FRACTION x its saturation rate"

# --- 1. tokenmeter ingest (durability sync), RSS and disk ------------------------------------
start_aggregator tm-ingest
run_bench ingest --target "127.0.0.1:$AGG_PORT" --events "$EVENTS" --producers 4 --window 8 \
  --max-seconds "$INGEST_MAX" --result-prefix tm.ingest
record tm.ingest.rss_kb "$(vm_hwm_kb "$AGG_PID")"
record tm.ingest.disk_running "$(dir_bytes "$AGG_DIR/data")"
stop_pid "$AGG_PID"
record tm.ingest.disk_stopped "$(dir_bytes "$AGG_DIR/data")"
run_bench compact --data-dir "$AGG_DIR/data"
record tm.ingest.disk_compacted "$(dir_bytes "$AGG_DIR/data")"
record tm.ingest.sst_compacted "$(files_bytes "$AGG_DIR/data" '*.sst')"

# --- 2. Redis ingest, per fsync setting ------------------------------------------------------
FSYNCS=(always)
[[ $EVERYSEC == 1 ]] && FSYNCS+=(everysec)
for fsync in "${FSYNCS[@]}"; do
  start_redis "redis-ingest-$fsync" "$fsync"
  run_bench redis-ingest --target "127.0.0.1:$REDIS_PORT" --events "$EVENTS" --producers 4 \
    --window 8 --max-seconds "$REDIS_INGEST_MAX" --result-prefix "redis_$fsync.ingest"
  record "redis_$fsync.ingest.rss_kb" "$(vm_hwm_kb "$REDIS_PID")"
  record "redis_$fsync.ingest.used_memory_peak" \
    "$(redis-cli -p "$REDIS_PORT" INFO memory | tr -d '\r' | awk -F: '/^used_memory_peak:/ {print $2}')"
  stop_pid "$REDIS_PID"
  record "redis_$fsync.ingest.aof_bytes" "$(dir_bytes "$REDIS_DIR/appendonlydir")"
done

# --- 3. quota: tokenmeter, then Redis per fsync setting --------------------------------------
QUOTA_FLAGS=(--in-flight "$IN_FLIGHT" --connections 4 --saturation-seconds "$SAT_S"
  --rate "$RATE" --paced-seconds "$PACED_S" --drain-seconds "$DRAIN_S"
  --half-load-seconds "$PACED_S")
start_aggregator tm-quota
run_bench quota --target "127.0.0.1:$AGG_PORT" "${QUOTA_FLAGS[@]}" --result-prefix tm.quota
record tm.quota.rss_kb "$(vm_hwm_kb "$AGG_PID")"
stop_pid "$AGG_PID"
for fsync in "${FSYNCS[@]}"; do
  start_redis "redis-quota-$fsync" "$fsync"
  run_bench redis-quota --target "127.0.0.1:$REDIS_PORT" "${QUOTA_FLAGS[@]}" \
    --result-prefix "redis_$fsync.quota"
  record "redis_$fsync.quota.rss_kb" "$(vm_hwm_kb "$REDIS_PID")"
  stop_pid "$REDIS_PID"
done

# --- 4. two hops: client -> sidecar -> shard, then the Redis relay per fsync setting ----------
RELAY_FLAGS=(--events "$SIDECAR_EVENTS" --batch-events "$RELAY_BATCH" --producers "$RELAY_PRODUCERS"
  --window "$RELAY_WINDOW" --max-seconds "$SIDECAR_MAX" --drain-seconds "$SIDECAR_DRAIN")
start_aggregator tm-sidecar-ingest
start_sidecar tm-sidecar-ingest "$AGG_PORT"
record_idle_rss tm.sidecar_ingest "$SIDECAR_PID" "$SIDECAR_STARTED"
run_bench sidecar-ingest --target "127.0.0.1:$SIDECAR_PORT" --count-target "127.0.0.1:$AGG_PORT" \
  "${RELAY_FLAGS[@]}" --result-prefix tm.sidecar_ingest
record tm.sidecar_ingest.rss_kb "$(vm_hwm_kb "$SIDECAR_PID")"
record tm.sidecar_ingest.shard_rss_kb "$(vm_hwm_kb "$AGG_PID")"
stop_pid "$SIDECAR_PID"
stop_pid "$AGG_PID"
for fsync in "${FSYNCS[@]}"; do
  start_redis "redis-relay-central-$fsync" "$fsync"
  CENTRAL_PID=$REDIS_PID; CENTRAL_PORT=$REDIS_PORT
  start_redis "redis-relay-local-$fsync" "$fsync"
  LOCAL_STARTED=$(date +%s.%N)
  record_idle_rss "redis_$fsync.sidecar_ingest" "$REDIS_PID" "$LOCAL_STARTED"
  run_bench redis-relay-ingest --target "127.0.0.1:$REDIS_PORT" \
    --count-target "127.0.0.1:$CENTRAL_PORT" "${RELAY_FLAGS[@]}" \
    --result-prefix "redis_$fsync.sidecar_ingest"
  record "redis_$fsync.sidecar_ingest.rss_kb" "$(vm_hwm_kb "$REDIS_PID")"
  stop_pid "$REDIS_PID"
  stop_pid "$CENTRAL_PID"
done

# --- 5. Reserve+Commit through the sidecar; the shard and the Redis peer direct, same rates ----
SIDECAR_QUOTA_FLAGS=(--in-flight "$IN_FLIGHT" --connections 4 --saturation-seconds "$SAT_S"
  --rate "$SIDECAR_RATE" --paced-seconds "$PACED_S" --drain-seconds "$DRAIN_S"
  --load-seconds "$PACED_S" --load-fraction "$SIDECAR_FRACTION")
start_aggregator tm-sidecar-quota
start_sidecar tm-sidecar-quota "$AGG_PORT"
record_idle_rss tm.sidecar_quota "$SIDECAR_PID" "$SIDECAR_STARTED"
run_bench quota --target "127.0.0.1:$SIDECAR_PORT" "${SIDECAR_QUOTA_FLAGS[@]}" \
  --result-prefix tm.sidecar_quota
record tm.sidecar_quota.rss_kb "$(vm_hwm_kb "$SIDECAR_PID")"
stop_pid "$SIDECAR_PID"
stop_pid "$AGG_PID"
start_aggregator tm-shard-quota  # The same phases without the sidecar: what the hop costs.
run_bench quota --target "127.0.0.1:$AGG_PORT" "${SIDECAR_QUOTA_FLAGS[@]}" \
  --result-prefix tm.shard_quota
stop_pid "$AGG_PID"
for fsync in "${FSYNCS[@]}"; do
  start_redis "redis-sidecar-quota-$fsync" "$fsync"
  run_bench redis-quota --target "127.0.0.1:$REDIS_PORT" "${SIDECAR_QUOTA_FLAGS[@]}" \
    --result-prefix "redis_$fsync.sidecar_quota"
  stop_pid "$REDIS_PID"
done

echo "== done ($(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
python3 "$REPO/tests/bench/summary.py" "$RESULTS" --sidecar-rate "$SIDECAR_RATE" \
  --sidecar-fraction "$SIDECAR_FRACTION" $([[ $EVERYSEC == 1 ]] && echo --everysec)
