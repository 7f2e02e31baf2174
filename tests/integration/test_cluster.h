// Test helpers for integration tests: one real aggregator shard started in-process (port 0,
// temporary data directory, temporary policy file, fake clock) and reached only through the
// generated gRPC stubs over loopback, as a client would.
//
// Every call made through these helpers carries a deadline, so a wedged server fails a test
// instead of hanging it.
//
// Thread-compatible: use each object from one test thread.
#ifndef TOKENMETER_TESTS_INTEGRATION_TEST_CLUSTER_H_
#define TOKENMETER_TESTS_INTEGRATION_TEST_CLUSTER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "services/aggregator/server.h"
#include "services/common/clock.h"
#include "tokenmeter/v1/admin.grpc.pb.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"
#include "tokenmeter/v1/quota.grpc.pb.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::integration {

// Deadline of one unary call made by the helpers.
inline constexpr absl::Duration kCallDeadline = absl::Seconds(10);

// Sets a deadline `timeout` from now on `context`.
void SetDeadline(grpc::ClientContext* context, absl::Duration timeout = kCallDeadline);

// Calls a unary method of a generated stub with a fresh context and kCallDeadline.
template <typename Stub, typename Request, typename Response>
grpc::Status CallWithDeadline(Stub& stub,
                              grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                           Response*),
                              const Request& request, Response* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  return (stub.*method)(&context, request, response);
}

// Returns the first of `prefix`, `prefix`-1, `prefix`-2, ... that shard `index` of `count`
// owns.
std::string TenantOwnedBy(std::string_view prefix, int32_t index, int32_t count);

// A fresh directory under testing::TempDir(), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Replaces the content of `path` atomically (write a sibling file, then rename over it), so a
// poller never reads a half-written file. Returns false on I/O error.
bool WriteFileAtomically(const std::string& path, const std::string& text);

// What one usage event holds; MakeEvent turns it into the proto.
struct EventSpec {
  std::string id;
  std::string tenant;
  std::string team = "core";
  std::string user = "alice";
  std::string provider = "openai";
  std::string model = "gpt-4o";
  uint64_t input = 100;
  uint64_t cached_input = 0;
  uint64_t output = 50;
  uint64_t reasoning = 0;
  absl::Time at;
};
v1::UsageEvent MakeEvent(const EventSpec& spec);

v1::IngestBatch MakeBatch(std::string_view producer_id, uint64_t epoch, uint64_t seq,
                          std::vector<v1::UsageEvent> events);

// Canonical one-line renderings, so expectations compare whole values:
// "seq=2 APPLIED expected=3 applied=2 dup=0 rejected=1" (detail left out), and
// "in=1 cached=0 out=2 reasoning=0 total=3 requests=1 cost=10 unpriced=0".
std::string RenderAck(const v1::IngestAck& ack);
std::string RenderTotals(const v1::UsageTotals& totals);
// "2025-06-15T12:00:00 <totals> | ..." (window starts in UTC), ascending as served.
std::string RenderSeries(const v1::GetUsageResponse& response);
// "team=core/user=bob:3000, model=gpt-4o:2500, ..." in rank order.
std::string RenderSpenders(const v1::TopSpendersResponse& response);

v1::TokenCounts Tokens(uint64_t input, uint64_t output, uint64_t cached_input = 0);

// Waits until `condition` holds, polling every 10 ms for at most `timeout`; returns whether
// it held. For conditions the server reaches asynchronously (file reloads, expiry).
bool PollUntil(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(5));

// One client ingest stream with a deadline on the whole call. Read() returns nullopt once the
// stream has ended (or the deadline passed); the destructor cancels an unfinished stream.
class IngestStream {
 public:
  explicit IngestStream(v1::IngestService::Stub* stub, absl::Duration deadline = absl::Seconds(60));
  ~IngestStream();
  IngestStream(const IngestStream&) = delete;
  IngestStream& operator=(const IngestStream&) = delete;

  // Sends one batch without waiting for its ack. Returns false if the stream is broken.
  bool Send(const v1::IngestBatch& batch);
  std::optional<v1::IngestAck> Read();
  // Sends one batch and returns its ack (an ack with OUTCOME_UNSPECIFIED if the stream broke).
  v1::IngestAck SendAndRead(const v1::IngestBatch& batch);
  // Half-closes the stream and returns its final status.
  grpc::Status Finish();

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>> stream_;
  bool finished_ = false;
};

// One aggregator shard, started in-process on 127.0.0.1:0 with its own data directory and
// policy file, and the stubs of a client connected to it.
class TestShard {
 public:
  struct Options {
    int32_t shard_index = 0;
    int32_t shard_count = 2;
    // Content of the policy file (written before the first Start()).
    std::string policy_yaml = "policies: []\n";
    size_t max_batch_events = 100;
    absl::Duration policy_poll_interval = absl::Milliseconds(50);
    // Initial time of the shard's fake clock.
    absl::Time start_time =
        absl::FromCivil(absl::CivilSecond(2025, 6, 15, 12, 0, 5), absl::UTCTimeZone());
  };

  explicit TestShard(Options options);
  ~TestShard();  // Stop(0) if running.
  TestShard(const TestShard&) = delete;
  TestShard& operator=(const TestShard&) = delete;

  // Starts the server (again, after Stop(): same data directory, same clock, a new port) and
  // connects new stubs.
  absl::Status Start();
  // AggregatorServer::Shutdown(grace), then drops the server. Idempotent.
  void Stop(absl::Duration grace = absl::ZeroDuration());

  // Rewrites the policy file atomically; the server picks it up at its next poll.
  bool RewritePolicyFile(const std::string& yaml);

  common::FakeClock& clock() { return clock_; }
  aggregator::AggregatorServer* server() { return server_.get(); }
  const std::string& policy_path() const { return policy_path_; }
  const std::string& data_dir() const { return data_dir_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  v1::IngestService::Stub& ingest() { return *ingest_; }
  v1::QuotaService::Stub& quota() { return *quota_; }
  v1::UsageService::Stub& usage() { return *usage_; }
  v1::AdminService::Stub& admin() { return *admin_; }

 private:
  const Options options_;
  TempDir dir_;
  const std::string data_dir_;
  const std::string policy_path_;
  common::FakeClock clock_;
  std::unique_ptr<aggregator::AggregatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::IngestService::Stub> ingest_;
  std::unique_ptr<v1::QuotaService::Stub> quota_;
  std::unique_ptr<v1::UsageService::Stub> usage_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

}  // namespace tokenmeter::integration

#endif  // TOKENMETER_TESTS_INTEGRATION_TEST_CLUSTER_H_
