// The benchmark drivers of tokenmeter-bench, one per subcommand. Each runs against a server
// that is already up (tests/bench/run.sh starts and stops them), is bounded in work and in
// time, prints its figures (see bench_util.h for the format) and returns the process exit code:
// 0 when it ran (whatever the figures), 1 when it could not run at all.
#ifndef TOKENMETER_TESTS_BENCH_DRIVERS_H_
#define TOKENMETER_TESTS_BENCH_DRIVERS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace tokenmeter::bench {

class RespConnection;

struct IngestBenchOptions {
  // tokenmeter: gRPC target "host:port"; redis: "host:port".
  std::string target;
  // Events to send in total (rounded up to whole batches).
  int64_t events = 2'000'000;
  int batch_events = 1000;
  // Concurrent producers (one stream / connection each) and batches in flight per producer.
  int producers = 4;
  int window = 8;
  // No new batch is started after this; batches in flight still finish (or time out).
  absl::Duration max_time = absl::Seconds(120);
  // Prefix of the RESULT keys, e.g. "tokenmeter.ingest".
  std::string result_prefix;
  uint64_t seed = 1;
};

struct QuotaBenchOptions {
  std::string target;
  // Saturation phase: `in_flight` pairs outstanding at all times, over `connections`
  // channels / connections, for `saturation_time`.
  int in_flight = 64;
  int connections = 4;
  absl::Duration saturation_time = absl::Seconds(10);
  // Paced phase: open-loop arrivals at `rate` pairs/s for `paced_time`; latency is measured
  // from each pair's intended start. Pairs not finished `drain_time` after the phase count as
  // unfinished (infinite latency). At most `max_paced_in_flight` pairs are outstanding; a pair
  // that must wait for a slot still counts its wait.
  double rate = 10'000;
  absl::Duration paced_time = absl::Seconds(10);
  absl::Duration drain_time = absl::Seconds(10);
  int max_paced_in_flight = 4096;
  // Between the two: a paced phase at `load_fraction` of the pairs/s the saturation phase
  // reached, for the latency of a server that is busy but not overloaded. 0 = skip. Its
  // RESULT keys use LoadPhaseName(load_fraction) (bench_util.h).
  absl::Duration half_load_time = absl::Seconds(10);
  double load_fraction = 0.5;
  std::string result_prefix;
  uint64_t seed = 2;
};

// Two-hop ingest: producers hand events to a durable local hop (the sidecar, or a local Redis
// list), which forwards them to the counting store (the shard, or a central Redis). Figures:
// accepted events/s at the first hop, and the time until the store has counted all of them.
struct RelayIngestOptions {
  // The first hop (sidecar gRPC address or local Redis host:port) and the producers' shape;
  // ingest.batch_events is the events per Report call / RPUSH.
  IngestBenchOptions ingest;
  // Where the events end up counted: the shard's gRPC address, or the central Redis.
  std::string count_target;
  // After the last accepted event, how long the store may take to count them all.
  absl::Duration drain_time = absl::Seconds(120);
  // Redis relay only: events per forwarded batch and forwarded batches in flight (the
  // sidecar's own defaults: 1000 and 8), over this many connections to the central Redis.
  int relay_batch_events = 1000;
  int relay_window = 8;
  int relay_connections = 4;
};

// Ingest into tokenmeter over the IngestService stream (exactly-once batches, durable acks).
int RunTokenmeterIngest(const IngestBenchOptions& options);
// The Redis peer: per event, HINCRBY of tenant/team/user day counters plus SET NX EX dedup.
int RunRedisIngest(const IngestBenchOptions& options);

// The commands by which the Redis peers count one event: SET NX EX of "ev:{tenant}:<event_id>"
// (dedup, 7 days), then HINCRBY in / out / req of the tenant, team and user day hashes
// "c:{tenant}[:team[:user]]:d<day>" (day = unix days). Appended to `redis`, not flushed.
inline constexpr int kRedisCountCommands = 10;
void AppendRedisCount(const std::string& event_id, const std::string& tenant,
                      const std::string& team, const std::string& user, const std::string& input,
                      const std::string& output, const std::string& day, RespConnection& redis);

// client -> sidecar (Report, fsynced local queue) -> shard (--durability sync).
int RunSidecarIngest(const RelayIngestOptions& options);
// The Redis peer of it: RPUSH to a local Redis list (appendfsync as configured), a relay
// thread forwarding to a central Redis with the commands of RunRedisIngest, LTRIM after.
int RunRedisRelayIngest(const RelayIngestOptions& options);

// Reserve+Commit pairs against tokenmeter's QuotaService (gRPC callback client): a shard, or
// a sidecar (which serves the same service and forwards to the owner shard).
int RunTokenmeterQuota(const QuotaBenchOptions& options);
// The Redis peer: two Lua scripts (EVALSHA) doing the same checks and holds.
int RunRedisQuota(const QuotaBenchOptions& options);

// Opens a stopped shard's RocksDB directory, flushes and compacts everything, closes it.
int RunCompact(const std::string& data_dir);

}  // namespace tokenmeter::bench

#endif  // TOKENMETER_TESTS_BENCH_DRIVERS_H_
