// tokenmeter-aggregator: one shard of the metering and quota plane. main() only parses flags,
// starts the server and waits for SIGTERM / SIGINT, then drains and exits.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/aggregator/server.h"
#include "services/common/clock.h"
#include "services/common/log.h"
#include "services/common/stop_signals.h"

namespace {

using tokenmeter::aggregator::ServerOptions;

// Seconds-valued flag helper: CLI11 parses doubles, we keep absl::Duration in options.
void AddDuration(CLI::App& app, const std::string& name, absl::Duration* target,
                 const std::string& help) {
  app.add_option_function<double>(
         name, [target](double seconds) { *target = absl::Seconds(seconds); }, help)
      ->default_str(absl::StrCat(absl::ToDoubleSeconds(*target)))
      ->check(CLI::PositiveNumber);
}

// The ordinal of a StatefulSet pod from its hostname ("tokenmeter-aggregator-2" -> 2).
absl::StatusOr<int> ShardIndexFromHostname() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    return absl::FailedPreconditionError("--shard-index-from-hostname: gethostname failed");
  }
  const std::string name(host);
  const size_t dash = name.rfind('-');
  int index = -1;
  if (dash == std::string::npos || !absl::SimpleAtoi(name.substr(dash + 1), &index) || index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--shard-index-from-hostname: hostname \"", name,
                                                   "\" does not end in -<ordinal>"));
  }
  return index;
}

}  // namespace

int main(int argc, char** argv) {
  ServerOptions options;
  CLI::App app{"tokenmeter-aggregator: a shard of the tokenmeter usage-metering and quota plane"};
  std::string durability = "sync";
  double drain_seconds = 10;
  app.add_option("--listen", options.listen, "gRPC listen address (host:port; port 0 = any)")
      ->capture_default_str();
  app.add_option("--data-dir", options.data_dir, "RocksDB directory of this shard")->required();
  app.add_option("--shard-index", options.shard.index, "index of this shard, 0-based")
      ->capture_default_str();
  bool index_from_hostname = false;
  app.add_flag("--shard-index-from-hostname", index_from_hostname,
               "take the shard index from the trailing -N of the hostname (a StatefulSet pod "
               "name such as tokenmeter-aggregator-2); overrides --shard-index");
  app.add_option("--shard-count", options.shard.count, "number of shards in the cluster")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--policy-file", options.policy_file,
                 "YAML policies and prices, hot-reloaded (optional)");
  AddDuration(app, "--policy-poll-seconds", &options.policy_poll_interval,
              "how often the policy file is checked for changes");
  app.add_option("--durability", durability,
                 "sync: ack after the WAL is fsynced (group-committed); process-crash-safe: ack "
                 "after the WAL is written to the OS (survives kill -9, not power loss)")
      ->capture_default_str()
      ->check(CLI::IsMember({"sync", "process-crash-safe"}));
  app.add_option("--max-disk-bytes", options.max_disk_bytes,
                 "SST disk budget; writes fail with RESOURCE_EXHAUSTED past it (0 = none)")
      ->capture_default_str();
  app.add_option("--max-batch-events", options.ingest.max_events_per_batch,
                 "most events in one ingest batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  AddDuration(app, "--dedup-window-seconds", &options.ingest.dedup_window,
              "how long event ids are remembered for deduplication");
  app.add_option("--max-message-bytes", options.max_message_bytes, "largest gRPC message")
      ->capture_default_str()
      ->check(CLI::Range(1024, 64 << 20));
  app.add_option("--workers", options.workers, "threads for unary RPCs")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--drain-seconds", drain_seconds, "grace period for open calls on SIGTERM")
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen,
                 "host:port serving /metrics, /healthz, /readyz (e.g. 0.0.0.0:9400; \"\" = off)");
  std::string usage_labels = "tenant,team,model";
  app.add_option("--usage-metric-labels", usage_labels,
                 "labels of tokenmeter_usage_* series, from tenant,team,user,api_key,model "
                 "(user and api_key multiply series: opt in knowingly)")
      ->capture_default_str();
  app.add_option("--usage-metric-max-series", options.usage_labels.max_series,
                 "series cap per usage family; label sets past it are folded into \"other\"")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  // Debian's abseil checks every mutex acquisition for lock-order cycles (~6% of CPU on the
  // quota path); our lock order is fixed and annotated, so skip the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (index_from_hostname) {
    auto index = ShardIndexFromHostname();
    if (!index.ok()) {
      std::cerr << index.status().message() << "\n";
      return 2;
    }
    options.shard.index = *index;
  }
  auto labels = tokenmeter::aggregator::ParseUsageLabels(usage_labels);
  if (!labels.ok()) {
    std::cerr << labels.status().message() << "\n";
    return 2;
  }
  options.usage_labels.labels = *labels;
  options.durability = durability == "sync" ? tokenmeter::storage::Durability::kSync
                                            : tokenmeter::storage::Durability::kProcessCrashSafe;
  options.quota.limits = options.ingest.event_limits;
  tokenmeter::common::InitLog(absl::StrCat("aggregator-", options.shard.index),
                              tokenmeter::common::LogLevel::kInfo);

  // Block the stop signals in every thread; main() waits for them synchronously.
  tokenmeter::common::BlockStopSignals();

  auto server = tokenmeter::aggregator::AggregatorServer::Start(
      options, tokenmeter::common::RealClock::Get());
  if (!server.ok()) {
    tokenmeter::common::Log(tokenmeter::common::LogLevel::kError, "cannot start shard",
                            {{"error", server.status().ToString()}});
    return 1;
  }
  tokenmeter::common::WaitForStopSignal();
  (*server)->Shutdown(absl::Seconds(drain_seconds));
  return 0;
}
