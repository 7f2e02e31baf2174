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
  // Between the two: a paced phase ("half") at half the pairs/s the saturation phase reached,
  // for the latency of a server that is busy but not overloaded. 0 = skip.
  absl::Duration half_load_time = absl::Seconds(10);
  std::string result_prefix;
  uint64_t seed = 2;
};

// Ingest into tokenmeter over the IngestService stream (exactly-once batches, durable acks).
int RunTokenmeterIngest(const IngestBenchOptions& options);
// The Redis peer: per event, HINCRBY of tenant/team/user day counters plus SET NX EX dedup.
int RunRedisIngest(const IngestBenchOptions& options);

// Reserve+Commit pairs against tokenmeter's QuotaService (gRPC callback client).
int RunTokenmeterQuota(const QuotaBenchOptions& options);
// The Redis peer: two Lua scripts (EVALSHA) doing the same checks and holds.
int RunRedisQuota(const QuotaBenchOptions& options);

// Opens a stopped shard's RocksDB directory, flushes and compacts everything, closes it.
int RunCompact(const std::string& data_dir);

}  // namespace tokenmeter::bench

#endif  // TOKENMETER_TESTS_BENCH_DRIVERS_H_
