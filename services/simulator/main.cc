// tokenmeter-simulator: drives a realistic fleet's traffic through tokenmeter sidecars for
// --duration seconds, prints a report every --report-interval seconds and a final summary,
// then exits. Every quota call and usage report goes to a sidecar (--sidecars); only the
// reports' reads (TopSpenders) go to the shards (--aggregators). main() only parses flags and
// wires the pieces (fleet.h, traffic.h, report.h).
//
// Exit code: 0 after a run; 1 if the sidecars never answered a single call; 2 bad flags.
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/create_channel.h"
#include "services/common/log.h"
#include "services/common/shard_router.h"
#include "services/simulator/fleet.h"
#include "services/simulator/report.h"
#include "services/simulator/stats.h"
#include "services/simulator/traffic.h"

namespace {

using tokenmeter::common::Log;
using tokenmeter::common::LogLevel;
namespace sim = tokenmeter::simulator;

struct Flags {
  std::string sidecars;
  std::string aggregators = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";
  double duration = 30;
  double report_interval = 5;
  double rpc_timeout = 2;
  uint64_t seed = 0;
};

void AddFlags(CLI::App& app, Flags& f, sim::TrafficOptions& t) {
  app.add_option("--sidecars", f.sidecars,
                 "sidecar addresses host:port,...: every quota call and usage report goes to "
                 "one of them (each team and report-only app has its own, round-robin)")
      ->envname("TOKENMETER_SIDECARS")
      ->required();
  app.add_option("--aggregators", f.aggregators,
                 "shard addresses host:port,... (index = shard index), only for the reports' "
                 "reads (TopSpenders of each tenant's owner shard)")
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
  app.add_option("--report-rate", t.report_rate,
                 "report-only usage events per second sent to the sidecars' ReportService "
                 "(0 = none)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100000.0));
  app.add_option("--report-attempts", t.report_attempts,
                 "attempts per Report call (same event_ids) before its events are given up")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--failure-rate", t.failure_rate,
                 "share of reserved calls that fail and are released")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--rpc-timeout", f.rpc_timeout, "deadline of each unary call, in seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 60.0));
  app.add_option("--seed", f.seed, "random seed (0 = from the clock)")->capture_default_str();
}

// One channel per sidecar, in --sidecars order. InvalidArgument for a malformed list.
absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> SidecarChannels(
    const std::string& list) {
  auto addresses = tokenmeter::common::ParseShardAddresses(list);  // Any host:port list.
  if (!addresses.ok()) return addresses.status();
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& address : *addresses) {
    channels.push_back(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  return channels;
}

void LogSidecarAssignment(const sim::Fleet& fleet, const std::string& sidecars) {
  std::vector<std::string> services;
  for (const sim::Team& t : fleet.teams) {
    services.push_back(absl::StrCat(t.tenant, "/", t.team, "=", t.sidecar));
  }
  for (const sim::ReportOnlyApp& a : fleet.apps) {
    services.push_back(absl::StrCat(a.tenant, "/", a.application, "=", a.sidecar));
  }
  Log(LogLevel::kInfo, "services and their sidecars",
      {{"sidecars", sidecars}, {"assignment", absl::StrJoin(services, ",")}});
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "tokenmeter-simulator: a fleet of tenants, teams and users calling LLMs through "
      "tokenmeter sidecars: quotas (Reserve/Commit/Release) for every call, one agentic "
      "'tokenmaxxing' team, and report-only apps sending usage with ReportService"};
  Flags flags;
  sim::TrafficOptions traffic;
  AddFlags(app, flags, traffic);
  CLI11_PARSE(app, argc, argv);
  tokenmeter::common::InitLog("simulator", LogLevel::kInfo);

  auto sidecars = SidecarChannels(flags.sidecars);
  if (!sidecars.ok()) {
    std::cerr << "error: --sidecars: " << sidecars.status().message() << "\n";
    return 2;
  }
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
  sim::Fleet fleet = sim::DefaultFleet();
  sim::AssignSidecars(static_cast<int>(sidecars->size()), &fleet);
  sim::Stats stats;
  sim::TrafficDriver driver(&fleet, *sidecars, &stats, traffic);
  sim::Reporter reporter(&fleet, router->get(), &stats, traffic.rpc_timeout, &std::cout);

  const absl::Duration duration = absl::Seconds(flags.duration);
  Log(LogLevel::kInfo, "starting",
      {{"sidecars", absl::StrCat(sidecars->size())},
       {"shards", absl::StrCat((*router)->shard_count())},
       {"duration_s", absl::StrCat(flags.duration)},
       {"seed", absl::StrCat(traffic.seed)}});
  LogSidecarAssignment(fleet, flags.sidecars);
  driver.Start();
  absl::Notification never;  // Sleeps between reports; the loop is bounded by `duration`.
  for (absl::Time next = start + absl::Seconds(flags.report_interval); next < start + duration;
       next += absl::Seconds(flags.report_interval)) {
    never.WaitForNotificationWithDeadline(next);
    reporter.Print(absl::Now() - start, duration);
  }
  never.WaitForNotificationWithDeadline(start + duration);
  driver.Stop();
  if (reporter.PrintFinal(absl::Now() - start) == 0) {
    std::cerr << "error: no sidecar answered any call; are the sidecars up at " << flags.sidecars
              << "?\n";
    return 1;
  }
  return 0;
}
