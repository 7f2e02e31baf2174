// Crash test of exactly-once ingest: the real tokenmeter-aggregator binary is killed with
// SIGKILL several times while producers stream batches to it and clients retry events; it is
// restarted on the same data dir each time (one life also ends with a graceful SIGTERM under
// load, which must drain and exit cleanly). Producers resend every unacked batch with the same
// seq after each crash. At the end the shard's usage totals of every tenant must equal the
// producers' ledger of distinct acknowledged events EXACTLY: a lost event or a double count
// fails the test.
//
// Size: TOKENMETER_CRASH_EVENTS raises the number of events (default and minimum 100,000).
// TOKENMETER_AGGREGATOR_BIN (environment) runs another aggregator binary than the one built
// with the test, e.g. an installed one, or a deliberately broken one to see the test fail.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/faults/ingest_producer.h"
#include "tests/faults/process.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::faults {
namespace {

constexpr int kProducers = 4;
constexpr uint64_t kMinEvents = 100'000;
constexpr int kKills = 4;
constexpr absl::Duration kShortestLife = absl::Milliseconds(1500);
constexpr absl::Duration kLongestLife = absl::Milliseconds(3000);
constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr absl::Duration kStopGrace = absl::Seconds(15);
constexpr absl::Duration kRpcTimeout = absl::Seconds(10);
constexpr char kServingLine[] = "msg=\"shard serving\"";

uint64_t EventsToSend() {
  uint64_t events = 0;
  const char* env = std::getenv("TOKENMETER_CRASH_EVENTS");
  if (env == nullptr || !absl::SimpleAtoi(env, &events)) return kMinEvents;
  return std::max(events, kMinEvents);
}

std::string AggregatorBinary() {
  const char* env = std::getenv("TOKENMETER_AGGREGATOR_BIN");
  return env != nullptr && env[0] != '\0' ? env : TOKENMETER_AGGREGATOR_BIN;
}

// The whole test's time budget: 120 s for the CI size, more for a larger run.
absl::Duration Budget(uint64_t events) {
  return absl::Seconds(120) + absl::Seconds(static_cast<double>(events - kMinEvents) / 5000);
}

// One aggregator shard process on one data dir, restarted at will. Each life listens on a
// port of its own choosing (port 0), read from its "shard serving" log line and published in
// the Endpoint. Each life logs to its own file.
class ShardProcess {
 public:
  ShardProcess(std::string dir, Endpoint* endpoint) : dir_(std::move(dir)), endpoint_(endpoint) {}

  absl::Status Start() {
    const absl::Time started = absl::Now();
    log_path_ = absl::StrCat(dir_, "/aggregator-", lives_++, ".log");
    SubprocessOptions options;
    options.stderr_path = log_path_;
    auto process = Subprocess::Start({AggregatorBinary(), "--listen", "127.0.0.1:0", "--data-dir",
                                      dir_ + "/data", "--shard-index", "0", "--shard-count", "1"},
                                     options);
    if (!process.ok()) return process.status();
    process_ = *std::move(process);
    auto line = process_->WaitForLine(log_path_, kServingLine, kStartTimeout);
    if (!line.ok()) return line.status();
    const size_t at = line->find(" port=");
    int port = 0;
    if (at == std::string::npos ||
        !absl::SimpleAtoi(line->substr(at + 6, line->find(' ', at + 6) - at - 6), &port)) {
      return absl::InternalError(absl::StrCat("no port in: ", *line));
    }
    endpoint_->Set(absl::StrCat("127.0.0.1:", port));
    longest_start_ = std::max(longest_start_, absl::Now() - started);
    return absl::OkStatus();
  }

  // kill -9 and reap.
  absl::Status Crash() {
    auto status = process_->Kill();
    if (!status.ok()) return status.status();
    if (!WIFSIGNALED(*status) || WTERMSIG(*status) != SIGKILL) {
      return absl::InternalError(
          absl::StrCat("shard died on its own: ", DescribeWaitStatus(*status)));
    }
    return absl::OkStatus();
  }

  // SIGTERM; fails unless the shard drains and exits with code 0 within kStopGrace (past it,
  // the shard is killed).
  absl::Status StopCleanly() {
    const absl::Time stop_start = absl::Now();
    absl::StatusOr<int> status = process_->Stop(kStopGrace);
    if (!status.ok()) return status.status();
    longest_stop_ = std::max(longest_stop_, absl::Now() - stop_start);
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
      return absl::InternalError(
          absl::StrCat("SIGTERM: ", DescribeWaitStatus(*status), ", log:\n", LogTail()));
    }
    return absl::OkStatus();
  }

  int lives() const { return lives_; }
  // The longest time from exec to serving.
  absl::Duration longest_start() const { return longest_start_; }
  // The longest time from SIGTERM to exit.
  absl::Duration longest_stop() const { return longest_stop_; }
  std::string LogTail() const { return ReadFileTail(log_path_, 4000); }

 private:
  const std::string dir_;
  Endpoint* const endpoint_;
  std::unique_ptr<Subprocess> process_;
  std::string log_path_;
  int lives_ = 0;
  absl::Duration longest_start_;
  absl::Duration longest_stop_;
};

std::string Render(const UsageSums& s) {
  return absl::StrCat("input=", s.input, " cached_input=", s.cached_input, " output=", s.output,
                      " reasoning=", s.reasoning, " requests=", s.requests);
}

// Day totals of one tenant over every window that can hold the test's events (UTC).
absl::StatusOr<UsageSums> QueryTenant(v1::UsageService::Stub* stub, const std::string& tenant) {
  v1::GetUsageRequest request;
  request.mutable_scope()->set_tenant(tenant);
  request.set_granularity(v1::GRANULARITY_DAY);
  request.set_time_zone("UTC");
  const absl::Time now = absl::Now();
  request.mutable_from()->set_seconds(absl::ToUnixSeconds(now - absl::Hours(48)));
  request.mutable_to()->set_seconds(absl::ToUnixSeconds(now + absl::Hours(24)));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(now + kRpcTimeout));
  v1::GetUsageResponse response;
  const grpc::Status status = stub->GetUsage(&context, request, &response);
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  UsageSums sums;
  for (const v1::UsagePoint& p : response.points()) {
    if (p.totals().total_tokens() != p.totals().input_tokens() + p.totals().output_tokens()) {
      return absl::DataLossError(absl::StrCat(tenant, ": total != input + output"));
    }
    sums.input += p.totals().input_tokens();
    sums.cached_input += p.totals().cached_input_tokens();
    sums.output += p.totals().output_tokens();
    sums.reasoning += p.totals().reasoning_tokens();
    sums.requests += p.totals().requests();
  }
  return sums;
}

// Expects the shard's usage of every tenant of the ledger to equal the ledger exactly.
void ExpectShardMatchesLedger(const Endpoint& endpoint, const Ledger& ledger) {
  auto stub = v1::UsageService::NewStub(
      grpc::CreateChannel(endpoint.Get(), grpc::InsecureChannelCredentials()));
  for (const auto& [tenant, expected] : ledger.Totals()) {
    absl::StatusOr<UsageSums> counted = QueryTenant(stub.get(), tenant);
    ASSERT_TRUE(counted.ok()) << tenant << ": " << counted.status();
    EXPECT_EQ(Render(*counted), Render(expected)) << "tenant " << tenant;
  }
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "tokenmeter_crash_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    shard_ = std::make_unique<ShardProcess>(dir_, &endpoint_);
  }
  void TearDown() override {
    if (HasFailure() && shard_ != nullptr) {
      std::cerr << "kept " << dir_ << "; last shard log:\n" << shard_->LogTail() << "\n";
    } else {
      std::filesystem::remove_all(dir_);
    }
  }

  // Ends shard lives, each lasting 1.5..3 s and serving at least one ack, and restarts the
  // shard each time: with kill -9 at least kKills times and until the producers have made
  // `min_events`, plus one graceful SIGTERM stop under load (ending the third life), which must
  // exit cleanly. Stops early at the deadline or when a producer gives up (`running` <
  // kProducers). Returns the number of kills.
  int RunKillSchedule(const ProducerStats& stats, uint64_t min_events,
                      const std::atomic<int>& running, absl::Time deadline) {
    std::mt19937_64 rng(20240601);  // Fixed: the same schedule every run.
    std::uniform_int_distribution<int64_t> life_ms(absl::ToInt64Milliseconds(kShortestLife),
                                                   absl::ToInt64Milliseconds(kLongestLife));
    auto acks = [&] { return stats.applied_acks.load() + stats.duplicate_acks.load(); };
    auto go_on = [&] { return absl::Now() < deadline && running.load() == kProducers; };
    int kills = 0;
    bool stopped_under_load = false;
    while ((kills < kKills || stats.events_made.load() < min_events) && go_on()) {
      const absl::Time end_at = absl::Now() + absl::Milliseconds(life_ms(rng));
      const uint64_t acks_at_start = acks();
      while ((absl::Now() < end_at || acks() == acks_at_start) && go_on()) {
        absl::SleepFor(absl::Milliseconds(5));  // The fault schedule's clock.
      }
      if (!go_on()) break;
      const bool graceful = kills == 2 && !stopped_under_load;
      if (absl::Status s = graceful ? shard_->StopCleanly() : shard_->Crash(); !s.ok()) {
        ADD_FAILURE() << (graceful ? "stop under load: " : "kill: ") << s;
        return kills;
      }
      if (graceful) {
        stopped_under_load = true;
      } else {
        ++kills;
      }
      if (absl::Status s = shard_->Start(); !s.ok()) {
        ADD_FAILURE() << "restart " << shard_->lives() << ": " << s;
        return kills;
      }
    }
    EXPECT_TRUE(stopped_under_load || !go_on());
    return kills;
  }

  std::string dir_;
  Endpoint endpoint_;
  std::unique_ptr<ShardProcess> shard_;
};

TEST_F(CrashTest, KillNineNeitherLosesNorDoubleCountsEvents) {
  const uint64_t min_events = EventsToSend();
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + Budget(min_events);
  absl::Status started = shard_->Start();
  ASSERT_TRUE(started.ok()) << started;

  Ledger ledger;
  ProducerStats stats;
  std::atomic<bool> keep_going{true};
  std::atomic<int> running{kProducers};
  std::vector<std::thread> threads;
  std::vector<int> finished(kProducers, 0);
  for (int i = 0; i < kProducers; ++i) {
    ProducerOptions options;
    options.producer_id = absl::StrCat("crash-p", i);
    options.min_events = (min_events + kProducers - 1) / kProducers;
    options.keep_going = &keep_going;
    options.deadline = deadline;
    threads.emplace_back([&, i, options] {
      finished[i] = IngestProducer(i, options, &endpoint_, &ledger, &stats).Run();
      running.fetch_sub(1);
    });
  }
  const int kills = RunKillSchedule(stats, min_events, running, deadline);
  keep_going = false;
  for (std::thread& t : threads) t.join();
  const absl::Duration ingest_time = absl::Now() - start;

  std::cout << "[ crash    ] " << stats.events_made << " events in " << stats.batches_made
            << " batches, " << kills << " kills, " << ingest_time << " ("
            << static_cast<int64_t>(stats.events_made / absl::ToDoubleSeconds(ingest_time))
            << " events/s); streams " << stats.streams << " (" << stats.stream_failures
            << " broken), resent batches " << stats.batches_resent << ", DUPLICATE acks "
            << stats.duplicate_acks << ", UNAVAILABLE acks " << stats.unavailable_acks
            << ", client retries deduplicated " << stats.retried_events << "\n";
  for (const std::string& error : stats.Errors()) ADD_FAILURE() << error;
  for (int i = 0; i < kProducers; ++i) EXPECT_TRUE(finished[i]) << "producer " << i;
  EXPECT_GE(kills, kKills);
  EXPECT_GE(stats.events_made.load(), min_events);
  // Sanity: the crashes really lost acks of applied batches, whose resends the shard knew,
  // and client retries really reached the shard.
  EXPECT_GT(stats.duplicate_acks.load(), 0u);
  EXPECT_GT(stats.retried_events.load(), 0u);
  uint64_t ledger_events = 0;
  for (const auto& [tenant, sums] : ledger.Totals()) ledger_events += sums.requests;
  EXPECT_EQ(ledger_events, stats.events_made.load()) << "every event made must be acked";
  ASSERT_FALSE(HasFailure());

  ExpectShardMatchesLedger(endpoint_, ledger);

  // A graceful stop drains and keeps everything; a restart reads the same totals.
  absl::Status stopped = shard_->StopCleanly();
  ASSERT_TRUE(stopped.ok()) << stopped;
  started = shard_->Start();
  ASSERT_TRUE(started.ok()) << started;
  ExpectShardMatchesLedger(endpoint_, ledger);
  stopped = shard_->StopCleanly();
  ASSERT_TRUE(stopped.ok()) << stopped;
  std::cout << "[ crash    ] total " << absl::Now() - start << ", " << shard_->lives()
            << " shard lives, longest start " << shard_->longest_start()
            << ", longest SIGTERM stop " << shard_->longest_stop() << "\n";
}

}  // namespace
}  // namespace tokenmeter::faults
