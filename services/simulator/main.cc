// tokenmeter-simulator: drives a realistic fleet's traffic against a tokenmeter cluster for
// --duration seconds, prints a report every --report-interval seconds and a final summary,
// then exits. main() only parses flags and wires the pieces (fleet.h, traffic.h,
// ingest_producer.h, report.h).
//
// Exit code: 0 after a run; 1 if the cluster never answered a single call; 2 bad flags.
#include <unistd.h>

#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "services/common/log.h"
#include "services/common/shard_router.h"
#include "services/simulator/fleet.h"
#include "services/simulator/ingest_producer.h"
#include "services/simulator/report.h"
#include "services/simulator/stats.h"
#include "services/simulator/traffic.h"

namespace {

using tokenmeter::common::Log;
using tokenmeter::common::LogLevel;
namespace sim = tokenmeter::simulator;

struct Flags {
  std::string aggregators = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";
  double duration = 30;
  double report_interval = 5;
  double rpc_timeout = 2;
  double flush_timeout = 10;
  uint64_t seed = 0;
};

void AddFlags(CLI::App& app, Flags& f, sim::TrafficOptions& t) {
  app.add_option("--aggregators", f.aggregators,
                 "shard addresses host:port,... (index = shard index)")
      ->envname("TOKENMETER_AGGREGATORS")
      ->capture_default_str();
  app.add_option("--duration", f.duration, "seconds of traffic, then a final summary and exit")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 86400.0));
  app.add_option("--report-interval", f.report_interval, "seconds between reports")
      ->capture_default_str()
      ->check(CLI::Range(0.5, 3600.0));
  app.add_option("--workers", t.chat_workers, "threads making chat calls")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  app.add_option("--agent-workers", t.agent_workers,
                 "threads running the tokenmaxxing team's agentic loops")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--ingest-rate", t.ingest_rate,
                 "report-only usage events per second sent through IngestService (0 = none)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100000.0));
  app.add_option("--failure-rate", t.failure_rate,
                 "share of reserved calls that fail and are released")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--rpc-timeout", f.rpc_timeout, "deadline of each unary call, in seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 60.0));
  app.add_option("--flush-timeout", f.flush_timeout,
                 "seconds to wait at the end for unacked report-only events")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  app.add_option("--seed", f.seed, "random seed (0 = from the clock)")->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "tokenmeter-simulator: a fleet of tenants, teams and users calling LLMs through "
      "tokenmeter quotas (Reserve/Commit/Release), one agentic 'tokenmaxxing' team, and "
      "report-only apps feeding IngestService"};
  Flags flags;
  sim::TrafficOptions traffic;
  AddFlags(app, flags, traffic);
  CLI11_PARSE(app, argc, argv);
  tokenmeter::common::InitLog("simulator", LogLevel::kInfo);

  auto router = tokenmeter::common::ShardRouter::Create(flags.aggregators);
  if (!router.ok()) {
    std::cerr << "error: --aggregators: " << router.status().message() << "\n";
    return 2;
  }
  const absl::Time start = absl::Now();
  const int64_t start_ms = absl::ToUnixMillis(start);
  traffic.seed = flags.seed != 0 ? flags.seed : static_cast<uint64_t>(start_ms);
  traffic.rpc_timeout = absl::Seconds(flags.rpc_timeout);
  traffic.id_prefix = absl::StrCat("sim-", getpid(), "-", start_ms);
  const sim::Fleet fleet = sim::DefaultFleet();
  sim::Stats stats;

  sim::ProducerOptions producer_options;
  producer_options.producer_id = absl::StrCat("simulator-", getpid());
  producer_options.epoch = static_cast<uint64_t>(start_ms);
  producer_options.stream_deadline = absl::Seconds(flags.duration + flags.flush_timeout + 60);
  sim::IngestProducer producer(router->get(), &stats, producer_options);
  sim::TrafficDriver driver(&fleet, router->get(), &stats, &producer, traffic);
  sim::Reporter reporter(&fleet, router->get(), &stats, traffic.rpc_timeout, &std::cout);

  const absl::Duration duration = absl::Seconds(flags.duration);
  Log(LogLevel::kInfo, "starting",
      {{"shards", absl::StrCat((*router)->shard_count())},
       {"duration_s", absl::StrCat(flags.duration)},
       {"producer_id", producer_options.producer_id},
       {"seed", absl::StrCat(traffic.seed)}});
  driver.Start();
  absl::Notification never;  // Sleeps between reports; the loop is bounded by `duration`.
  for (absl::Time next = start + absl::Seconds(flags.report_interval); next < start + duration;
       next += absl::Seconds(flags.report_interval)) {
    never.WaitForNotificationWithDeadline(next);
    reporter.Print(absl::Now() - start, duration);
  }
  never.WaitForNotificationWithDeadline(start + duration);
  driver.Stop();
  const uint64_t unacked = producer.Stop(absl::Seconds(flags.flush_timeout));
  const uint64_t answered = reporter.PrintFinal(absl::Now() - start, unacked);
  if (answered == 0) {
    std::cerr << "error: no shard answered any call; is the cluster up at " << flags.aggregators
              << "?\n";
    return 1;
  }
  return 0;
}
