// tokenmeter-sidecar: runs next to an AI service; main() only parses flags, starts the sidecar
// and waits for SIGTERM / SIGINT.
#include <signal.h>

#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/common/log.h"
#include "services/common/stop_signals.h"
#include "services/sidecar/sidecar_server.h"

int main(int argc, char** argv) {
  using tokenmeter::sidecar::SidecarOptions;
  SidecarOptions options;
  CLI::App app{"tokenmeter-sidecar: durable local usage queue and quota proxy for one AI service"};
  std::string aggregators, templ, failure_mode = "open";
  int shard_count = 0;
  double quota_deadline_ms = 250, drain_seconds = 5;
  app.add_option("--listen", options.listen, "loopback gRPC address (\"\" = none)")
      ->capture_default_str();
  app.add_option("--unix-socket", options.unix_socket, "unix socket path for local services");
  app.add_option("--data-dir", options.data_dir, "local queue directory (keep it on a volume)")
      ->required();
  app.add_option("--aggregators", aggregators,
                 "shard addresses, comma-separated, in shard order (host:port,...)");
  app.add_option("--aggregator-template", templ,
                 "shard address template with {i}, e.g. tokenmeter-{i}.tokenmeter-headless:7400");
  app.add_option("--shard-count", shard_count, "number of shards (required with the template)");
  app.add_option("--max-queue-bytes", options.max_queue_bytes,
                 "local queue budget; Report answers RESOURCE_EXHAUSTED past it")
      ->capture_default_str();
  app.add_option("--batch-max-events", options.sender.max_batch_events, "events per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--window", options.sender.window, "batches in flight per shard stream")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--quota-deadline-ms", quota_deadline_ms, "deadline of a forwarded quota call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--failure-mode", failure_mode,
                 "answer when a shard is unreachable and the tenant's policies are not known yet")
      ->capture_default_str()
      ->check(CLI::IsMember({"open", "closed"}));
  app.add_option("--workers", options.workers, "threads for blocking work (fsync)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--drain-seconds", drain_seconds, "grace period for open calls on SIGTERM")
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen,
                 "host:port serving /metrics, /healthz, /readyz (e.g. 0.0.0.0:9401; \"\" = off)");
  CLI11_PARSE(app, argc, argv);
  // Debian's abseil checks every mutex acquisition for lock-order cycles (~6% of CPU on the
  // quota path); our lock order is fixed and annotated, so skip the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  tokenmeter::common::InitLog("sidecar", tokenmeter::common::LogLevel::kInfo);
  auto targets = tokenmeter::sidecar::ShardTargets(aggregators, templ, shard_count);
  if (!targets.ok()) {
    tokenmeter::common::Log(tokenmeter::common::LogLevel::kError, "bad shard map",
                            {{"error", targets.status().ToString()}});
    return 2;
  }
  options.shard_targets = *targets;
  options.quota_deadline = absl::Milliseconds(quota_deadline_ms);
  options.default_failure_mode = failure_mode == "closed"
                                     ? tokenmeter::aggregator::FailureMode::kClosed
                                     : tokenmeter::aggregator::FailureMode::kOpen;

  tokenmeter::common::BlockStopSignals();
  auto server = tokenmeter::sidecar::SidecarServer::Start(options);
  if (!server.ok()) {
    tokenmeter::common::Log(tokenmeter::common::LogLevel::kError, "cannot start sidecar",
                            {{"error", server.status().ToString()}});
    return 1;
  }
  tokenmeter::common::WaitForStopSignal();
  (*server)->Shutdown(absl::Seconds(drain_seconds));
  return 0;
}
