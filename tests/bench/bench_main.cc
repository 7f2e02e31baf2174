// tokenmeter-bench: benchmark drivers for tokenmeter and its Redis peer. main() only parses
// flags and runs one subcommand; tests/bench/run.sh starts the servers and runs them all.
#include <string>

#include "CLI/CLI.hpp"
#include "tests/bench/drivers.h"

namespace {

using tokenmeter::bench::IngestBenchOptions;
using tokenmeter::bench::QuotaBenchOptions;
using tokenmeter::bench::RelayIngestOptions;

void AddSeconds(CLI::App* app, const std::string& name, absl::Duration* target,
                const std::string& help) {
  app->add_option_function<double>(
         name, [target](double seconds) { *target = absl::Seconds(seconds); }, help)
      ->default_str(std::to_string(absl::ToDoubleSeconds(*target)))
      ->check(CLI::PositiveNumber);
}

void AddIngestFlags(CLI::App* app, IngestBenchOptions* o) {
  app->add_option("--target", o->target, "server address host:port")->required();
  app->add_option("--events", o->events, "events to send")->capture_default_str();
  app->add_option("--batch-events", o->batch_events, "events per batch")->capture_default_str();
  app->add_option("--producers", o->producers, "concurrent streams / connections")
      ->capture_default_str();
  app->add_option("--window", o->window, "batches in flight per producer")->capture_default_str();
  AddSeconds(app, "--max-seconds", &o->max_time, "start no batch after this many seconds");
  app->add_option("--result-prefix", o->result_prefix, "prefix of RESULT keys")->required();
}

// The two-hop drivers: Report calls of 100 events (RPUSH for Redis), 1,000,000 events.
void AddRelayFlags(CLI::App* app, RelayIngestOptions* o, const std::string& count_help) {
  o->ingest.events = 1'000'000;
  o->ingest.batch_events = 100;
  o->ingest.max_time = absl::Seconds(60);
  AddIngestFlags(app, &o->ingest);
  app->add_option("--count-target", o->count_target, count_help)->required();
  AddSeconds(app, "--drain-seconds", &o->drain_time,
             "after the last accepted event, how long counting them all may take");
  app->add_option("--relay-batch-events", o->relay_batch_events,
                  "Redis relay: events per forwarded batch")
      ->capture_default_str();
  app->add_option("--relay-window", o->relay_window, "Redis relay: forwarded batches in flight")
      ->capture_default_str();
  app->add_option("--relay-connections", o->relay_connections,
                  "Redis relay: connections to the central Redis")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

void AddQuotaFlags(CLI::App* app, QuotaBenchOptions* o) {
  app->add_option("--target", o->target, "server address host:port")->required();
  app->add_option("--in-flight", o->in_flight, "pairs in flight at saturation")
      ->capture_default_str();
  app->add_option("--connections", o->connections, "channels / connections")->capture_default_str();
  AddSeconds(app, "--saturation-seconds", &o->saturation_time, "length of the saturation phase");
  app->add_option("--rate", o->rate, "offered pairs/s of the paced phase")->capture_default_str();
  AddSeconds(app, "--paced-seconds", &o->paced_time, "length of the paced phase");
  AddSeconds(app, "--drain-seconds", &o->drain_time,
             "after the paced phase, how long open pairs may still finish");
  app->add_option("--max-paced-in-flight", o->max_paced_in_flight,
                  "most pairs outstanding in the paced phase")
      ->capture_default_str();
  app->add_option_function<double>(
         "--half-load-seconds,--load-seconds",
         [o](double seconds) { o->half_load_time = absl::Seconds(seconds); },
         "length of the paced phase at --load-fraction of the saturation rate (0 = skip)")
      ->default_str(std::to_string(absl::ToDoubleSeconds(o->half_load_time)))
      ->check(CLI::NonNegativeNumber);
  app->add_option(
         "--load-fraction", o->load_fraction,
         "that phase's share of the saturation rate (0.5: phase \"half\", else \"pct<N>\")")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 1.0));
  app->add_option("--result-prefix", o->result_prefix, "prefix of RESULT keys")->required();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tokenmeter-bench: throughput and latency figures for tokenmeter and Redis"};
  app.require_subcommand(1);
  IngestBenchOptions ingest;
  IngestBenchOptions redis_ingest;
  QuotaBenchOptions quota;
  QuotaBenchOptions redis_quota;
  RelayIngestOptions sidecar_ingest;
  RelayIngestOptions redis_relay;
  std::string data_dir;
  CLI::App* ingest_cmd = app.add_subcommand("ingest", "durable batch ingest into one shard");
  AddIngestFlags(ingest_cmd, &ingest);
  CLI::App* redis_ingest_cmd =
      app.add_subcommand("redis-ingest", "the same events into Redis (HINCRBY + SET NX EX)");
  AddIngestFlags(redis_ingest_cmd, &redis_ingest);
  CLI::App* sidecar_ingest_cmd = app.add_subcommand(
      "sidecar-ingest", "Report into a sidecar; wait until its shard counted everything");
  AddRelayFlags(sidecar_ingest_cmd, &sidecar_ingest, "the shard behind the sidecar (GetUsage)");
  CLI::App* redis_relay_cmd = app.add_subcommand(
      "redis-relay-ingest", "RPUSH to a local Redis, relay to a central one (HINCRBY + SET NX)");
  AddRelayFlags(redis_relay_cmd, &redis_relay, "the central Redis host:port");
  CLI::App* quota_cmd =
      app.add_subcommand("quota", "Reserve+Commit pairs against a shard or a sidecar");
  AddQuotaFlags(quota_cmd, &quota);
  CLI::App* redis_quota_cmd =
      app.add_subcommand("redis-quota", "Reserve+Commit pairs as Redis Lua scripts");
  AddQuotaFlags(redis_quota_cmd, &redis_quota);
  CLI::App* compact_cmd =
      app.add_subcommand("compact", "flush and compact a stopped shard's data directory");
  compact_cmd->add_option("--data-dir", data_dir, "RocksDB directory")->required();
  CLI11_PARSE(app, argc, argv);

  if (ingest_cmd->parsed()) return tokenmeter::bench::RunTokenmeterIngest(ingest);
  if (redis_ingest_cmd->parsed()) return tokenmeter::bench::RunRedisIngest(redis_ingest);
  if (sidecar_ingest_cmd->parsed()) return tokenmeter::bench::RunSidecarIngest(sidecar_ingest);
  if (redis_relay_cmd->parsed()) return tokenmeter::bench::RunRedisRelayIngest(redis_relay);
  if (quota_cmd->parsed()) return tokenmeter::bench::RunTokenmeterQuota(quota);
  if (redis_quota_cmd->parsed()) return tokenmeter::bench::RunRedisQuota(redis_quota);
  return tokenmeter::bench::RunCompact(data_dir);
}
