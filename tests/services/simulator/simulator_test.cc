// The simulator against a real 3-shard cluster started in-process (port 0, temporary data,
// the local policy file deploy/local/policies.yaml): the tokenmaxxing team is denied while
// the others are served, the report-only stream is applied exactly once, and the report
// shows both.
#include <atomic>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/aggregator/policy.h"
#include "services/common/shard_router.h"
#include "services/simulator/fleet.h"
#include "services/simulator/ingest_producer.h"
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
  }

  std::vector<std::unique_ptr<integration::TestShard>> shards_;
  std::unique_ptr<common::ShardRouter> router_;
};

TEST_F(SimulatorTest, TokenmaxxingTeamIsDeniedOthersServedReportOnlyEventsApplied) {
  const Fleet fleet = DefaultFleet();
  Stats stats;
  ProducerOptions producer_options;
  producer_options.producer_id = "simulator-test";
  producer_options.epoch = 1;
  IngestProducer producer(router_.get(), &stats, producer_options);
  TrafficOptions options;
  options.chat_workers = 4;
  options.agent_workers = 4;
  options.ingest_rate = 400;
  options.seed = 11;
  options.id_prefix = "simtest";
  TrafficDriver driver(&fleet, router_.get(), &stats, &producer, options);
  driver.Start();
  // Bounded wait for enough traffic of every kind (a workload, not a synchronisation sleep).
  const absl::Time give_up = absl::Now() + absl::Seconds(90);
  StatsSnapshot s;
  for (;;) {
    s = stats.Snapshot();
    const TeamStats agents = Team(s, "acme", "agents");
    if ((agents.denied >= 40 && agents.denied > 2 * agents.allowed && s.reserves >= 200 &&
         s.ingest_events_applied >= 200) ||
        absl::Now() > give_up) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  driver.Stop();
  EXPECT_EQ(producer.Stop(absl::Seconds(20)), 0u) << "report-only events left unacked";
  s = stats.Snapshot();

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
  EXPECT_GE(s.ingest_events_applied, 200u);
  EXPECT_EQ(s.ingest_events_rejected, 0u);
  EXPECT_EQ(s.ingest_events_dropped, 0u);
  EXPECT_EQ(s.ingest_events_duplicate, 0u);

  std::ostringstream out;
  Reporter reporter(&fleet, router_.get(), &stats, absl::Seconds(10), &out);
  EXPECT_GT(reporter.PrintFinal(absl::Seconds(1), 0), 0u);
  const std::string report = out.str();
  EXPECT_THAT(report, HasSubstr("-- acme (shard 2) --"));
  EXPECT_THAT(report, HasSubstr("agents [agentic]"));
  EXPECT_THAT(report, HasSubstr("EXCEEDED"));
  // TopSpenders of the owner shard lists the agents team and the report-only usage.
  EXPECT_THAT(report, HasSubstr("top spenders today"));
  EXPECT_THAT(report, Not(HasSubstr("top spenders: error")));
  EXPECT_THAT(report, HasSubstr("FINAL SUMMARY"));
}

TEST(IngestProducerTest, KeepsEventsUnackedWhileTheShardIsDown) {
  // Nothing listens on port 1 of loopback (privileged, unused): every stream fails at once.
  auto router = common::ShardRouter::Create("127.0.0.1:1");
  ASSERT_TRUE(router.ok());
  Stats stats;
  ProducerOptions options;
  options.producer_id = "simulator-test-down";
  options.epoch = 1;
  IngestProducer producer(router->get(), &stats, options);
  for (int i = 0; i < 10; ++i) {
    v1::UsageEvent e;
    e.set_event_id(absl::StrCat("e", i));
    e.set_tenant("acme");
    producer.Add(e);
  }
  // Bounded wait until the sender has tried and failed at least once.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (stats.Snapshot().rpc_errors.empty() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(producer.Stop(absl::Milliseconds(300)), 10u);
  const StatsSnapshot s = stats.Snapshot();
  EXPECT_TRUE(s.rpc_errors.count("Ingest UNAVAILABLE")) << s.rpc_errors.size();
  EXPECT_EQ(s.ingest_events_applied, 0u);
  EXPECT_EQ(s.ingest_events_dropped, 0u);
}

// An IngestService that breaks the first stream after reading one batch (no ack), then acks
// every batch as APPLIED, remembering the seqs it saw.
class FlakyIngest final : public v1::IngestService::Service {
 public:
  grpc::Status Ingest(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<v1::IngestAck, v1::IngestBatch>* stream) override {
    v1::IngestBatch batch;
    const bool first_stream = streams_.fetch_add(1) == 0;
    while (stream->Read(&batch)) {
      {
        absl::MutexLock lock(&mu_);
        seqs_.push_back(batch.seq());
      }
      if (first_stream) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected");
      v1::IngestAck ack;
      ack.set_seq(batch.seq());
      ack.set_outcome(v1::IngestAck::APPLIED);
      ack.set_expected_seq(batch.seq() + 1);
      ack.set_applied_events(batch.events_size());
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }

  std::vector<uint64_t> seqs() {
    absl::MutexLock lock(&mu_);
    return seqs_;
  }

 private:
  std::atomic<int> streams_{0};
  absl::Mutex mu_;
  std::vector<uint64_t> seqs_ ABSL_GUARDED_BY(mu_);
};

TEST(IngestProducerTest, ResendsAnUnackedBatchWithTheSameSeqAfterAStreamError) {
  FlakyIngest service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto router = common::ShardRouter::Create(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(router.ok());
  Stats stats;
  ProducerOptions options;
  options.producer_id = "simulator-test-flaky";
  options.epoch = 1;
  options.linger = absl::Milliseconds(500);  // The 5 events form one batch.
  IngestProducer producer(router->get(), &stats, options);
  for (int i = 0; i < 5; ++i) {
    v1::UsageEvent e;
    e.set_event_id(absl::StrCat("e", i));
    e.set_tenant("acme");
    producer.Add(e);
  }
  EXPECT_EQ(producer.Stop(absl::Seconds(20)), 0u);
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  EXPECT_EQ(service.seqs(), (std::vector<uint64_t>{1, 1}));
  const StatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.ingest_events_applied, 5u);
  EXPECT_EQ(s.rpc_errors.count("Ingest UNAVAILABLE"), 1u);
}

}  // namespace
}  // namespace tokenmeter::simulator
