// The simulator against a real cluster started in-process (port 0, temporary data, the local
// policy file deploy/local/policies.yaml): 3 shards and 2 sidecars, with the simulator talking
// only to the sidecars. The tokenmaxxing team is denied while the others are served, every
// report-only event a sidecar accepted is counted exactly once at its owner shard, and the
// report shows both. Plus the simulator's handling of sidecar answers made without a shard
// (fallback decisions, queued commits) and of failed Report calls (retried with the same
// event_ids, bounded).
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/common/shard_router.h"
#include "services/sidecar/sidecar_server.h"
#include "services/simulator/fleet.h"
#include "services/simulator/report.h"
#include "services/simulator/stats.h"
#include "services/simulator/traffic.h"
#include "tests/integration/test_cluster.h"

namespace tokenmeter::simulator {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadPolicyFile() {
  std::ifstream in(std::string(TOKENMETER_SOURCE_DIR) + "/deploy/local/policies.yaml");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TeamStats Team(const StatsSnapshot& s, const std::string& tenant, const std::string& team) {
  auto it = s.teams.find({tenant, team});
  return it == s.teams.end() ? TeamStats() : it->second;
}

uint64_t ReportedEvents(const StatsSnapshot& s) {
  uint64_t events = 0;
  for (const auto& [application, r] : s.reported) events += r.events;
  return events;
}

std::shared_ptr<grpc::Channel> Loopback(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
}

// Starts a sidecar on 127.0.0.1:0 with its queue in `dir`, forwarding to `shard_targets`.
std::unique_ptr<sidecar::SidecarServer> StartSidecar(const std::string& dir,
                                                     std::vector<std::string> shard_targets) {
  sidecar::SidecarOptions options;
  options.listen = "127.0.0.1:0";
  options.data_dir = dir;
  options.shard_targets = std::move(shard_targets);
  // The machine is shared and the test is not timed: a slow shard must not turn into a
  // fallback decision here (fallbacks have their own test below).
  options.quota_deadline = absl::Seconds(5);
  options.sender.backoff_max = absl::Milliseconds(200);
  options.workers = 2;
  auto server = sidecar::SidecarServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Runs `driver` until `done` holds for a snapshot (bounded: at most 90 s), then stops it.
// The wait is for a workload to happen, not a synchronisation sleep.
StatsSnapshot RunUntil(TrafficDriver& driver, const Stats& stats,
                       const std::function<bool(const StatsSnapshot&)>& done) {
  driver.Start();
  const absl::Time give_up = absl::Now() + absl::Seconds(90);
  while (!done(stats.Snapshot()) && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(50));
  driver.Stop();
  return stats.Snapshot();
}

class SimulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string yaml = ReadPolicyFile();
    ASSERT_FALSE(yaml.empty());
    std::vector<std::string> addresses;
    for (int i = 0; i < 3; ++i) {
      integration::TestShard::Options options;
      options.shard_index = i;
      options.shard_count = 3;
      options.policy_yaml = yaml;
      options.max_batch_events = 1000;
      // Events carry real timestamps; the shards' clocks must agree (and then stand still).
      options.start_time = absl::Now();
      shards_.push_back(std::make_unique<integration::TestShard>(options));
      const absl::Status started = shards_.back()->Start();
      ASSERT_TRUE(started.ok()) << started;
      addresses.push_back(absl::StrCat("127.0.0.1:", shards_.back()->server()->port()));
    }
    auto router = common::ShardRouter::Create(absl::StrJoin(addresses, ","));
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = *std::move(router);
    for (int i = 0; i < 2; ++i) {
      sidecar_dirs_.push_back(std::make_unique<integration::TempDir>());
      sidecars_.push_back(StartSidecar(sidecar_dirs_.back()->path(), addresses));
      ASSERT_NE(sidecars_.back(), nullptr);
      sidecar_channels_.push_back(Loopback(sidecars_.back()->port()));
    }
  }

  // The usage the owner shard counted today (UTC) for `app`'s user scope.
  v1::UsageTotals CountedAtShard(const ReportOnlyApp& app) {
    v1::GetUsageRequest request;
    request.mutable_scope()->set_tenant(app.tenant);
    request.mutable_scope()->set_team(app.team);
    request.mutable_scope()->set_user(app.user);
    request.set_granularity(v1::GRANULARITY_DAY);
    request.mutable_from()->set_seconds(absl::ToUnixSeconds(absl::Now() - absl::Hours(48)));
    request.mutable_to()->set_seconds(absl::ToUnixSeconds(absl::Now() + absl::Hours(48)));
    v1::GetUsageResponse response;
    const int owner = router_->OwnerOf(app.tenant);
    const grpc::Status status = integration::CallWithDeadline(
        shards_[owner]->usage(), &v1::UsageService::Stub::GetUsage, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    v1::UsageTotals sum;
    for (const v1::UsagePoint& p : response.points()) {
      sum.set_requests(sum.requests() + p.totals().requests());
      sum.set_total_tokens(sum.total_tokens() + p.totals().total_tokens());
    }
    return sum;
  }

  // Declared in this order so the sidecars stop before their directories and the shards go.
  std::vector<std::unique_ptr<integration::TestShard>> shards_;
  std::unique_ptr<common::ShardRouter> router_;
  std::vector<std::unique_ptr<integration::TempDir>> sidecar_dirs_;
  std::vector<std::unique_ptr<sidecar::SidecarServer>> sidecars_;
  std::vector<std::shared_ptr<grpc::Channel>> sidecar_channels_;
};

TEST_F(SimulatorTest, TokenmaxxingTeamIsDeniedOthersServedReportOnlyUsageCountedExactly) {
  Fleet fleet = DefaultFleet();
  AssignSidecars(2, &fleet);
  Stats stats;
  TrafficOptions options;
  options.chat_workers = 4;
  options.agent_workers = 4;
  options.report_rate = 400;
  options.seed = 11;
  options.id_prefix = "simtest";
  TrafficDriver driver(&fleet, sidecar_channels_, &stats, options);
  StatsSnapshot s = RunUntil(driver, stats, [](const StatsSnapshot& s) {
    const TeamStats agents = Team(s, "acme", "agents");
    return agents.denied >= 40 && agents.denied > 2 * agents.allowed && s.reserves >= 200 &&
           ReportedEvents(s) >= 200;
  });

  const TeamStats agents = Team(s, "acme", "agents");
  EXPECT_GE(agents.denied, 40u);
  EXPECT_GT(agents.denied, agents.allowed) << "the runaway agents should mostly be refused";
  EXPECT_TRUE(agents.denied_by.count("acme-agents-per-user-minute") ||
              agents.denied_by.count("acme-agents-daily-tokens"));
  uint64_t others_allowed = 0, others_denied = 0;
  for (const auto& [key, t] : s.teams) {
    if (key.second == "agents") continue;
    others_allowed += t.allowed;
    others_denied += t.denied;
  }
  EXPECT_GT(others_allowed, 100u);
  EXPECT_LE(others_denied * 50, others_allowed) << "other teams should be served (< 2% denied)";
  EXPECT_TRUE(s.rpc_errors.empty()) << s.rpc_errors.begin()->first;
  EXPECT_EQ(s.fallback_allowed + s.fallback_denied, 0u) << "every shard is up";
  EXPECT_EQ(s.commits_queued, 0u);
  EXPECT_EQ(s.report_events_failed, 0u);

  // Both sidecars carried quota calls and reports, and together accepted exactly what the
  // simulator counted as accepted.
  uint64_t accepted_by_sidecars = 0;
  for (const auto& sidecar : sidecars_) {
    EXPECT_GT(sidecar->quota().counters().forwarded.load(), 0u);
    EXPECT_GT(sidecar->report().counters().events_accepted.load(), 0u);
    accepted_by_sidecars += sidecar->report().counters().events_accepted.load();
  }
  EXPECT_EQ(accepted_by_sidecars, ReportedEvents(s));

  // Once the sidecars' queues are drained, each app's usage is counted exactly once.
  for (const auto& sidecar : sidecars_) {
    EXPECT_TRUE(integration::PollUntil([&] { return sidecar->queue()->Stats().events == 0; },
                                       absl::Seconds(30)))
        << "a sidecar still holds events";
  }
  for (const ReportOnlyApp& app : fleet.apps) {
    const ReportedUsage reported = s.reported[app.application];
    EXPECT_GT(reported.events, 0u) << app.application;
    const v1::UsageTotals counted = CountedAtShard(app);
    EXPECT_EQ(counted.requests(), reported.events) << app.application;
    EXPECT_EQ(counted.total_tokens(), reported.total_tokens) << app.application;
  }

  std::ostringstream out;
  Reporter reporter(&fleet, router_.get(), &stats, absl::Seconds(10), &out);
  EXPECT_GT(reporter.PrintFinal(absl::Seconds(1)), 0u);
  const std::string report = out.str();
  EXPECT_THAT(report, HasSubstr("-- acme (shard 2) --"));
  EXPECT_THAT(report, HasSubstr("agents [agentic]"));
  EXPECT_THAT(report, HasSubstr("EXCEEDED"));
  // TopSpenders of the owner shard lists the agents team and the report-only usage.
  EXPECT_THAT(report, HasSubstr("top spenders today"));
  EXPECT_THAT(report, Not(HasSubstr("top spenders: error")));
  EXPECT_THAT(report, HasSubstr("FINAL SUMMARY"));
  EXPECT_THAT(report, HasSubstr("sidecar fallbacks: 0 Reserve decisions"));
  EXPECT_THAT(report, HasSubstr("events accepted (durably queued) by sidecars"));
}

TEST(SimulatorSidecarTest, CountsFallbackDecisionsAndQueuedCommitsWhileTheShardIsUnreachable) {
  // Nothing listens on port 1 of loopback (privileged, unused): the sidecar's shard is down,
  // so it answers Reserve from the failure mode (open: no policy known) and queues commits.
  integration::TempDir dir;
  std::unique_ptr<sidecar::SidecarServer> sidecar = StartSidecar(dir.path(), {"127.0.0.1:1"});
  ASSERT_NE(sidecar, nullptr);
  Fleet fleet = DefaultFleet();
  AssignSidecars(1, &fleet);
  Stats stats;
  TrafficOptions options;
  options.chat_workers = 2;
  options.agent_workers = 0;
  options.report_rate = 0;
  options.failure_rate = 0;
  TrafficDriver driver(&fleet, {Loopback(sidecar->port())}, &stats, options);
  const StatsSnapshot s = RunUntil(driver, stats, [](const StatsSnapshot& s) {
    return s.fallback_allowed >= 10 && s.commits_queued >= 5;
  });

  EXPECT_GE(s.fallback_allowed, 10u);
  EXPECT_EQ(s.fallback_denied, 0u);
  EXPECT_EQ(s.fallback_allowed, s.reserves) << "no decision came from a shard";
  uint64_t committed = 0;
  for (const auto& [key, t] : s.teams) committed += t.committed;
  EXPECT_GE(s.commits_queued, 5u);
  EXPECT_EQ(s.commits_queued, committed) << "every commit was queued by the sidecar";
  EXPECT_TRUE(s.rpc_errors.empty()) << s.rpc_errors.begin()->first;

  auto router = common::ShardRouter::Create("127.0.0.1:1");
  ASSERT_TRUE(router.ok());
  std::ostringstream out;
  Reporter reporter(&fleet, router->get(), &stats, absl::Milliseconds(200), &out);
  EXPECT_GT(reporter.PrintFinal(absl::Seconds(1)), 0u);
  EXPECT_THAT(out.str(), HasSubstr(absl::StrCat("sidecar fallbacks: ", s.fallback_allowed,
                                                " Reserve decisions made from the policy failure "
                                                "mode (",
                                                s.fallback_allowed, " allowed, 0 denied), ",
                                                s.commits_queued, " commits queued")));
  sidecar->Shutdown(absl::ZeroDuration());
}

// A ReportService that fails the calls whose 0-based index `fail` says with `code`, accepts
// the others, and remembers the event ids of every call.
class FlakyReportService final : public v1::ReportService::Service {
 public:
  FlakyReportService(std::function<bool(int)> fail, grpc::StatusCode code)
      : fail_(std::move(fail)), code_(code) {}

  grpc::Status Report(grpc::ServerContext* context, const v1::ReportRequest* request,
                      v1::ReportResponse* response) override {
    std::vector<std::string> ids;
    for (const v1::UsageEvent& e : request->events()) ids.push_back(e.event_id());
    int index;
    {
      absl::MutexLock lock(&mu_);
      index = static_cast<int>(calls_.size());
      calls_.push_back(std::move(ids));
    }
    if (fail_(index)) return grpc::Status(code_, "injected");
    response->set_accepted(request->events_size());
    return grpc::Status::OK;
  }

  // The event ids of every call so far, in call order.
  std::vector<std::vector<std::string>> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  const std::function<bool(int)> fail_;
  const grpc::StatusCode code_;
  absl::Mutex mu_;
  std::vector<std::vector<std::string>> calls_ ABSL_GUARDED_BY(mu_);
};

// A server for `service` on 127.0.0.1:0.
std::unique_ptr<grpc::Server> Serve(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

TrafficOptions ReportOnly() {
  TrafficOptions options;
  options.chat_workers = 0;
  options.agent_workers = 0;
  options.report_rate = 100;
  options.id_prefix = "flaky";
  return options;
}

TEST(SimulatorSidecarTest, RepeatsAFailedReportWithTheSameEventIds) {
  FlakyReportService service([](int call) { return call == 0; }, grpc::StatusCode::UNAVAILABLE);
  int port = 0;
  std::unique_ptr<grpc::Server> server = Serve(&service, &port);
  ASSERT_NE(server, nullptr);
  Fleet fleet = DefaultFleet();
  AssignSidecars(1, &fleet);
  Stats stats;
  TrafficDriver driver(&fleet, {Loopback(port)}, &stats, ReportOnly());
  const StatsSnapshot s =
      RunUntil(driver, stats, [](const StatsSnapshot& s) { return s.report_calls >= 3; });
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));

  const std::vector<std::vector<std::string>> calls = service.calls();
  ASSERT_GE(calls.size(), 4u);
  EXPECT_EQ(calls[1], calls[0]) << "the retry carries the same event_ids";
  EXPECT_NE(calls[2], calls[1]);
  EXPECT_EQ(s.report_retries, 1u);
  EXPECT_EQ(s.report_calls, calls.size() - 1);
  EXPECT_EQ(s.report_events_failed, 0u);
  EXPECT_EQ(s.rpc_errors.at("Report UNAVAILABLE"), 1u);
  // Every event of an accepted call is counted, once.
  std::set<std::string> ids;
  for (size_t i = 1; i < calls.size(); ++i) ids.insert(calls[i].begin(), calls[i].end());
  EXPECT_EQ(ReportedEvents(s), ids.size());
}

TEST(SimulatorSidecarTest, GivesUpOnAReportAfterTheLastAttempt) {
  FlakyReportService service([](int) { return true; }, grpc::StatusCode::RESOURCE_EXHAUSTED);
  int port = 0;
  std::unique_ptr<grpc::Server> server = Serve(&service, &port);
  ASSERT_NE(server, nullptr);
  Fleet fleet = DefaultFleet();
  AssignSidecars(1, &fleet);
  Stats stats;
  TrafficOptions options = ReportOnly();
  options.report_attempts = 3;
  TrafficDriver driver(&fleet, {Loopback(port)}, &stats, options);
  const StatsSnapshot s =
      RunUntil(driver, stats, [](const StatsSnapshot& s) { return s.report_events_failed > 0; });
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));

  // Each distinct call was made exactly 3 times (the loop was stopped between calls).
  const std::vector<std::vector<std::string>> calls = service.calls();
  ASSERT_GE(calls.size(), 3u);
  ASSERT_EQ(calls.size() % 3, 0u);
  uint64_t events = 0;
  for (size_t i = 0; i < calls.size(); i += 3) {
    EXPECT_EQ(calls[i + 1], calls[i]);
    EXPECT_EQ(calls[i + 2], calls[i]);
    events += calls[i].size();
  }
  EXPECT_EQ(s.report_events_failed, events);
  EXPECT_EQ(s.report_retries, calls.size() / 3 * 2);
  EXPECT_EQ(s.report_calls, 0u);
  EXPECT_TRUE(s.reported.empty());
}

}  // namespace
}  // namespace tokenmeter::simulator
