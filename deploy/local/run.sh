#!/usr/bin/env bash
# The main job: a local 3-shard tokenmeter cluster with the fleet simulator.
#
#   1. installs the build dependencies (Debian packages; idempotent),
#   2. builds tokenmeter-aggregator, tokenmeter-simulator and tokenmeterctl into $BUILD_DIR,
#   3. starts 3 aggregator shards on 127.0.0.1 with data under $TOKENMETER_DATA/shard-<i> and
#      the policies of deploy/local/policies.yaml,
#   4. waits (bounded) until every shard answers its gRPC health check,
#   5. runs the simulator for $DURATION seconds (reports every $REPORT_INTERVAL seconds),
#   6. prints today's usage per tenant with `tokenmeterctl top`,
#   7. stops the shards with SIGTERM (also on any error or Ctrl-C) and keeps their data.
#
# Settings (environment):
#   DURATION=30                     simulator run time in seconds
#   REPORT_INTERVAL=5               seconds between simulator reports
#   TOKENMETER_DATA=/tmp/tokenmeter-local   data dirs and shard logs (kept after the run)
#   TOKENMETER_PORTS="7401 7402 7403"       gRPC ports of shards 0, 1, 2 (127.0.0.1)
#   BUILD_DIR=<repo>/build          build directory;  JOBS=2  ninja parallelism
#   SIMULATOR_ARGS=""               extra simulator flags, e.g. "--workers 8 --ingest-rate 500"
#   STARTUP_TIMEOUT=60              seconds to wait for the shards to answer
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
DATA="${TOKENMETER_DATA:-/tmp/tokenmeter-local}"
DURATION="${DURATION:-30}"
REPORT_INTERVAL="${REPORT_INTERVAL:-5}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-60}"
JOBS="${JOBS:-2}"
read -r -a PORTS <<<"${TOKENMETER_PORTS:-7401 7402 7403}"
POLICY_FILE="$ROOT/deploy/local/policies.yaml"
TENANTS=(acme globex initech umbrella)

if [ "${#PORTS[@]}" -ne 3 ]; then
  echo "run.sh: TOKENMETER_PORTS must name 3 ports, got '${PORTS[*]}'" >&2
  exit 2
fi
ADDRS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"

say() { printf '\n==> %s\n' "$*"; }

# ---- 1. dependencies, 2. build --------------------------------------------------------------
say "installing dependencies (Debian packages, idempotent)"
"$ROOT/deploy/local/install-deps.sh"

say "building into $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD_DIR" -j "$JOBS" tokenmeter-aggregator tokenmeter-simulator tokenmeterctl
AGGREGATOR="$BUILD_DIR/services/aggregator/tokenmeter-aggregator"
SIMULATOR="$BUILD_DIR/services/simulator/tokenmeter-simulator"
CTL=("$BUILD_DIR/services/ctl/tokenmeterctl" --aggregators "$ADDRS")

# ---- 3. shards ------------------------------------------------------------------------------
PIDS=()
# shellcheck disable=SC2317  # Reached through the EXIT trap.
stop_shards() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Bounded wait: the shards drain for at most --drain-seconds, then close RocksDB.
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: shard pid $pid did not stop within 20 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
# shellcheck disable=SC2317  # Reached through the EXIT trap.
on_exit() {
  local rc=$?
  if [ "${#PIDS[@]}" -gt 0 ]; then
    say "stopping shards (SIGTERM)"
    stop_shards
  fi
  echo "data dirs kept: $DATA/shard-{0,1,2} (shard logs: $DATA/shard-<i>.log)"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting 3 shards on $ADDRS (data: $DATA)"
mkdir -p "$DATA"
for i in 0 1 2; do
  mkdir -p "$DATA/shard-$i"
  "$AGGREGATOR" --listen "127.0.0.1:${PORTS[$i]}" --data-dir "$DATA/shard-$i" \
    --shard-index "$i" --shard-count 3 --policy-file "$POLICY_FILE" --drain-seconds 5 \
    >"$DATA/shard-$i.log" 2>&1 &
  PIDS+=("$!")
  echo "shard $i: pid ${PIDS[-1]}, 127.0.0.1:${PORTS[$i]}, log $DATA/shard-$i.log"
done

# ---- 4. wait until every shard answers ------------------------------------------------------
say "waiting for the shards' health checks (at most ${STARTUP_TIMEOUT} s)"
ready=0
deadline=$((SECONDS + STARTUP_TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
  dead=0
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || dead=1
  done
  [ "$dead" -eq 0 ] || break # A shard exited: no point in waiting.
  if "${CTL[@]}" --timeout 2 health >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" -ne 1 ]; then
  for i in 0 1 2; do
    echo "--- last lines of $DATA/shard-$i.log" >&2
    tail -n 20 "$DATA/shard-$i.log" >&2 || true
  done
  echo "run.sh: the cluster did not come up (a shard exited, or a port is in use; see the logs" \
    "above)" >&2
  exit 1
fi
"${CTL[@]}" health
for t in "${TENANTS[@]}"; do
  echo "tenant $t -> shard $("${CTL[@]}" owner "$t")"
done

# ---- 5. the simulator -----------------------------------------------------------------------
say "running the fleet simulator for ${DURATION} s"
# shellcheck disable=SC2086  # SIMULATOR_ARGS is a list of flags.
"$SIMULATOR" --aggregators "$ADDRS" --duration "$DURATION" \
  --report-interval "$REPORT_INTERVAL" ${SIMULATOR_ARGS:-}

# ---- 6. final usage report ------------------------------------------------------------------
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

# ---- 7. stop (the EXIT trap stops the shards and prints where the data is) ------------------
exit 0
