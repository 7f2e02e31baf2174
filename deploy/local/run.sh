#!/usr/bin/env bash
# The main job: a local tokenmeter cluster of 3 shards and 2 sidecars, with the fleet simulator
# talking only to the sidecars.
#
#   1. installs the build dependencies (Debian packages; idempotent),
#   2. builds tokenmeter-aggregator, tokenmeter-sidecar, tokenmeter-simulator and tokenmeterctl
#      into $BUILD_DIR,
#   3. starts 3 aggregator shards on 127.0.0.1 with data under $TOKENMETER_DATA/shard-<i>, the
#      policies of deploy/local/policies.yaml and /metrics on 127.0.0.1:9401-9403,
#   4. waits (bounded) until every shard answers its gRPC health check and /readyz,
#   5. starts 2 sidecars on 127.0.0.1 (queues under $TOKENMETER_DATA/sidecar-<i>, /metrics on
#      127.0.0.1:9411-9412) and waits (bounded) until they answer too; the ports match the
#      scrape config deploy/prometheus/prometheus.yml,
#   6. runs the simulator against the sidecars for $DURATION seconds (reports every
#      $REPORT_INTERVAL seconds): every quota call and usage report goes through a sidecar,
#   7. waits (bounded) until the sidecars' queues are delivered, then prints today's usage per
#      tenant with `tokenmeterctl top` and one `tokenmeterctl check`,
#   8. stops everything by PID with SIGTERM, sidecars first, then shards (also on any error or
#      Ctrl-C), and keeps the data.
#
# Settings (environment):
#   DURATION=30                     simulator run time in seconds
#   REPORT_INTERVAL=5               seconds between simulator reports
#   TOKENMETER_DATA=/tmp/tokenmeter-local   data dirs and logs (kept after the run)
#   TOKENMETER_PORTS="7401 7402 7403"       gRPC ports of shards 0, 1, 2 (127.0.0.1)
#   TOKENMETER_METRICS_PORTS="9401 9402 9403"   /metrics ports of shards 0, 1, 2
#   SIDECAR_PORTS="7501 7502"               gRPC ports of sidecars 0, 1
#   SIDECAR_METRICS_PORTS="9411 9412"       /metrics ports of sidecars 0, 1
#   BUILD_DIR=<repo>/build          build directory;  JOBS=2  ninja parallelism
#   SIMULATOR_ARGS=""               extra simulator flags, e.g. "--workers 8 --report-rate 500"
#   STARTUP_TIMEOUT=60              seconds to wait for the shards, then for the sidecars
#   DRAIN_TIMEOUT=30                seconds to wait for the sidecars' queues after the run
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
DATA="${TOKENMETER_DATA:-/tmp/tokenmeter-local}"
DURATION="${DURATION:-30}"
REPORT_INTERVAL="${REPORT_INTERVAL:-5}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-60}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-30}"
JOBS="${JOBS:-2}"
read -r -a PORTS <<<"${TOKENMETER_PORTS:-7401 7402 7403}"
read -r -a METRICS_PORTS <<<"${TOKENMETER_METRICS_PORTS:-9401 9402 9403}"
read -r -a SIDECAR_PORTS <<<"${SIDECAR_PORTS:-7501 7502}"
read -r -a SIDECAR_METRICS_PORTS <<<"${SIDECAR_METRICS_PORTS:-9411 9412}"
POLICY_FILE="$ROOT/deploy/local/policies.yaml"
TENANTS=(acme globex initech umbrella)

if [ "${#PORTS[@]}" -ne 3 ] || [ "${#METRICS_PORTS[@]}" -ne 3 ]; then
  echo "run.sh: TOKENMETER_PORTS and TOKENMETER_METRICS_PORTS must name 3 ports each" >&2
  exit 2
fi
if [ "${#SIDECAR_PORTS[@]}" -ne 2 ] || [ "${#SIDECAR_METRICS_PORTS[@]}" -ne 2 ]; then
  echo "run.sh: SIDECAR_PORTS and SIDECAR_METRICS_PORTS must name 2 ports each" >&2
  exit 2
fi
ADDRS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"
SIDECAR_ADDRS="127.0.0.1:${SIDECAR_PORTS[0]},127.0.0.1:${SIDECAR_PORTS[1]}"

say() { printf '\n==> %s\n' "$*"; }

# Prints the body of an HTTP GET; fails on a non-2xx answer, or after 2 s.
http_get() {
  python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1"
}

# ---- 1. dependencies, 2. build --------------------------------------------------------------
say "installing dependencies (Debian packages, idempotent)"
"$ROOT/deploy/local/install-deps.sh"

say "building into $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD_DIR" -j "$JOBS" tokenmeter-aggregator tokenmeter-sidecar tokenmeter-simulator \
  tokenmeterctl
AGGREGATOR="$BUILD_DIR/services/aggregator/tokenmeter-aggregator"
SIDECAR="$BUILD_DIR/services/sidecar/tokenmeter-sidecar"
SIMULATOR="$BUILD_DIR/services/simulator/tokenmeter-simulator"
CTL=("$BUILD_DIR/services/ctl/tokenmeterctl" --aggregators "$ADDRS")

# ---- stopping (from the EXIT trap) ----------------------------------------------------------
SHARD_PIDS=()
SIDECAR_PIDS=()
# Sends SIGTERM to every PID given, then waits for each (bounded: 20 s, then SIGKILL).
# shellcheck disable=SC2317  # Reached through the EXIT trap.
stop_pids() {
  local what=$1 pid
  shift
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Each process drains for at most --drain-seconds (5), then closes RocksDB.
  for pid in "$@"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $what pid $pid did not stop within 20 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
# shellcheck disable=SC2317  # Reached through the EXIT trap.
on_exit() {
  local rc=$?
  # Sidecars first: they hold the traffic's queue and talk to the shards.
  if [ "${#SIDECAR_PIDS[@]}" -gt 0 ]; then
    say "stopping sidecars (SIGTERM): ${SIDECAR_PIDS[*]}"
    stop_pids sidecar "${SIDECAR_PIDS[@]}"
    SIDECAR_PIDS=()
  fi
  if [ "${#SHARD_PIDS[@]}" -gt 0 ]; then
    say "stopping shards (SIGTERM): ${SHARD_PIDS[*]}"
    stop_pids shard "${SHARD_PIDS[@]}"
    SHARD_PIDS=()
  fi
  echo "data dirs kept: $DATA/shard-{0,1,2}, $DATA/sidecar-{0,1} (logs: $DATA/*.log)"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (at most STARTUP_TIMEOUT s) until every PID runs and `check` succeeds. On failure
# prints the tails of the logs given and exits 1.
wait_until_up() {
  local what=$1 check=$2 pids=$3 logs=$4 pid log dead deadline=$((SECONDS + STARTUP_TIMEOUT))
  say "waiting for the $what (at most ${STARTUP_TIMEOUT} s)"
  while [ "$SECONDS" -lt "$deadline" ]; do
    dead=0
    for pid in $pids; do
      kill -0 "$pid" 2>/dev/null || dead=1
    done
    [ "$dead" -eq 0 ] || break # One exited: no point in waiting.
    if "$check" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  for log in $logs; do
    echo "--- last lines of $log" >&2
    tail -n 20 "$log" >&2 || true
  done
  echo "run.sh: the $what did not come up (one exited, or a port is in use; see the logs" \
    "above)" >&2
  exit 1
}

# Every shard answers its gRPC health check and /readyz.
# shellcheck disable=SC2317  # Called through wait_until_up.
shards_ready() {
  "${CTL[@]}" --timeout 2 health || return 1
  local port
  for port in "${METRICS_PORTS[@]}"; do
    http_get "http://127.0.0.1:$port/readyz" || return 1
  done
}

# Every sidecar answers its gRPC health check and /readyz.
# shellcheck disable=SC2317  # Called through wait_until_up.
sidecars_ready() {
  "$BUILD_DIR/services/ctl/tokenmeterctl" --aggregators "$SIDECAR_ADDRS" --timeout 2 health ||
    return 1
  local port
  for port in "${SIDECAR_METRICS_PORTS[@]}"; do
    http_get "http://127.0.0.1:$port/readyz" || return 1
  done
}

# ---- 3. shards, 4. wait ---------------------------------------------------------------------
say "starting 3 shards on $ADDRS (data: $DATA)"
mkdir -p "$DATA"
for i in 0 1 2; do
  mkdir -p "$DATA/shard-$i"
  "$AGGREGATOR" --listen "127.0.0.1:${PORTS[$i]}" --data-dir "$DATA/shard-$i" \
    --shard-index "$i" --shard-count 3 --policy-file "$POLICY_FILE" --drain-seconds 5 \
    --metrics-listen "127.0.0.1:${METRICS_PORTS[$i]}" >"$DATA/shard-$i.log" 2>&1 &
  SHARD_PIDS+=("$!")
  echo "shard $i: pid ${SHARD_PIDS[-1]}, 127.0.0.1:${PORTS[$i]}," \
    "metrics 127.0.0.1:${METRICS_PORTS[$i]}, log $DATA/shard-$i.log"
done
wait_until_up shards shards_ready "${SHARD_PIDS[*]}" "$DATA/shard-0.log $DATA/shard-1.log \
  $DATA/shard-2.log"
"${CTL[@]}" health
for t in "${TENANTS[@]}"; do
  echo "tenant $t -> shard $("${CTL[@]}" owner "$t")"
done

# ---- 5. sidecars ----------------------------------------------------------------------------
# Started once the shards answer, so their first quota calls find the shards up.
say "starting 2 sidecars on $SIDECAR_ADDRS"
for i in 0 1; do
  mkdir -p "$DATA/sidecar-$i"
  "$SIDECAR" --listen "127.0.0.1:${SIDECAR_PORTS[$i]}" --data-dir "$DATA/sidecar-$i" \
    --aggregators "$ADDRS" --metrics-listen "127.0.0.1:${SIDECAR_METRICS_PORTS[$i]}" \
    --drain-seconds 5 >"$DATA/sidecar-$i.log" 2>&1 &
  SIDECAR_PIDS+=("$!")
  echo "sidecar $i: pid ${SIDECAR_PIDS[-1]}, 127.0.0.1:${SIDECAR_PORTS[$i]}," \
    "metrics 127.0.0.1:${SIDECAR_METRICS_PORTS[$i]}, log $DATA/sidecar-$i.log"
done
wait_until_up sidecars sidecars_ready "${SIDECAR_PIDS[*]}" "$DATA/sidecar-0.log \
  $DATA/sidecar-1.log"
echo "sidecars ready"

# ---- 6. the simulator -----------------------------------------------------------------------
say "running the fleet simulator for ${DURATION} s against the sidecars $SIDECAR_ADDRS"
# shellcheck disable=SC2086  # SIMULATOR_ARGS is a list of flags.
"$SIMULATOR" --sidecars "$SIDECAR_ADDRS" --aggregators "$ADDRS" --duration "$DURATION" \
  --report-interval "$REPORT_INTERVAL" ${SIMULATOR_ARGS:-}

# ---- 7. final usage report ------------------------------------------------------------------
# Events in a sidecar's local queue (its tokenmeter_sidecar_queue_events gauge).
queued_events() {
  http_get "http://127.0.0.1:$1/metrics" |
    awk '$1 == "tokenmeter_sidecar_queue_events" { print $2 }'
}
say "waiting for the sidecars to deliver their queues (at most ${DRAIN_TIMEOUT} s)"
deadline=$((SECONDS + DRAIN_TIMEOUT))
for i in 0 1; do
  left="?"
  while [ "$SECONDS" -lt "$deadline" ]; do
    left="$(queued_events "${SIDECAR_METRICS_PORTS[$i]}" || echo "?")"
    [ "$left" = "0" ] && break
    sleep 0.2
  done
  echo "sidecar $i: $left events left in its queue"
done

say "usage today per tenant (tokenmeterctl top)"
for t in "${TENANTS[@]}"; do
  echo
  "${CTL[@]}" top --tenant "$t" --level team --limit 10
done
echo
"${CTL[@]}" top --tenant acme --level user --metric total_tokens --limit 5
echo
say "would one more agent step fit? (tokenmeterctl check; exit 3 = denied)"
check_rc=0
"${CTL[@]}" check --tenant acme --team agents --user coder-bot-1 --api-key k-agents-coder-bot-1 \
  --provider anthropic --model claude-sonnet-4-20250514 --input 120000 --output 16384 ||
  check_rc=$?
echo "tokenmeterctl check exit code: $check_rc"

# ---- 8. stop (the EXIT trap stops sidecars, then shards, and prints where the data is) -------
exit 0
