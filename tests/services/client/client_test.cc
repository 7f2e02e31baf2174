// The client library against a real sidecar and a real aggregator shard, both in-process on
// loopback (port 0, temporary directories, a policy file with a small daily budget), reached
// only through tokenmeter::client. Shard state is read back through its own gRPC API.
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/aggregator/server.h"
#include "services/client/tokenmeter_client.h"
#include "services/common/clock.h"
#include "services/sidecar/sidecar_server.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::client {
namespace {

// One shard; acme may spend 1000 tokens a day.
constexpr char kPolicies[] = R"(policies:
  - id: acme-daily
    selector: {tenant: acme}
    limits:
      - {metric: total_tokens, window: day, amount: 1000}
)";

// Bound of every polling loop: long enough for a loaded 2-core machine.
constexpr absl::Duration kPatience = absl::Seconds(20);

const Scope kScope{
    .tenant = "acme", .team = "research", .user = "alice", .provider = "openai", .model = "gpt-4o"};

Usage UsageOf(std::string event_id, uint64_t input, uint64_t output) {
  return {.event_id = std::move(event_id),
          .tenant = kScope.tenant,
          .team = kScope.team,
          .user = kScope.user,
          .application = "chat",
          .provider = kScope.provider,
          .model = kScope.model,
          .tokens = {.input = input, .output = output}};
}

// Polls `done` every 20 ms until it is true or `patience` has passed; returns its last value.
bool Eventually(const std::function<bool()>& done, absl::Duration patience = kPatience) {
  const absl::Time give_up = absl::Now() + patience;
  while (!done()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// The acme limit as "used=U outstanding=O", or the error.
std::string RenderLimit(const absl::StatusOr<Decision>& d) {
  if (!d.ok()) return d.status().ToString();
  if (d->limits.size() != 1) return absl::StrCat(d->limits.size(), " limits");
  return absl::StrCat("used=", d->limits[0].used, " outstanding=", d->limits[0].outstanding);
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tm-client.XXXXXX";  // Short: a unix socket path has ~100 bytes.
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    std::ofstream(dir_ + "/policies.yaml") << kPolicies;
    ASSERT_TRUE(StartShard("127.0.0.1:0").ok());
    ASSERT_TRUE(StartSidecar().ok());
    auto client = Client::Connect(absl::StrCat("127.0.0.1:", sidecar_->port()), Options());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::make_unique<Client>(*std::move(client));
  }

  void TearDown() override {
    if (sidecar_) sidecar_->Shutdown(absl::ZeroDuration());
    if (shard_) shard_->Shutdown(absl::ZeroDuration());
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  static ClientOptions Options() {
    ClientOptions options;
    options.deadline = absl::Seconds(5);  // The machine is shared; the tests are not timed.
    return options;
  }

  // Starts the shard on `listen` (a fixed port restarts it where the sidecar expects it).
  absl::Status StartShard(const std::string& listen) {
    aggregator::ServerOptions options;
    options.listen = listen;
    options.data_dir = dir_ + "/shard";
    options.policy_file = dir_ + "/policies.yaml";
    options.workers = 2;
    auto shard = aggregator::AggregatorServer::Start(options, common::RealClock::Get());
    if (!shard.ok()) return shard.status();
    shard_ = *std::move(shard);
    shard_port_ = shard_->port();
    usage_ = v1::UsageService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", shard_port_),
                                                           grpc::InsecureChannelCredentials()));
    return absl::OkStatus();
  }

  void StopShard() {
    shard_->Shutdown(absl::ZeroDuration());
    shard_.reset();
  }

  absl::Status RestartShard() { return StartShard(absl::StrCat("127.0.0.1:", shard_port_)); }

  absl::Status StartSidecar() {
    sidecar::SidecarOptions options;
    options.listen = "127.0.0.1:0";
    options.unix_socket = socket_path();
    options.data_dir = dir_ + "/sidecar";
    options.shard_targets = {absl::StrCat("127.0.0.1:", shard_port_)};
    options.quota_deadline = absl::Milliseconds(500);
    options.sender.backoff_max = absl::Milliseconds(200);
    options.workers = 2;
    auto sidecar = sidecar::SidecarServer::Start(options);
    if (!sidecar.ok()) return sidecar.status();
    sidecar_ = *std::move(sidecar);
    return absl::OkStatus();
  }

  std::string socket_path() const { return dir_ + "/sidecar.sock"; }

  // What the shard counted for acme today: "total=T requests=R", or the error.
  std::string CountedAtShard() {
    v1::GetUsageRequest request;
    request.mutable_scope()->set_tenant("acme");
    request.set_granularity(v1::GRANULARITY_DAY);
    v1::GetUsageResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    const grpc::Status s = usage_->GetUsage(&context, request, &response);
    if (!s.ok()) return absl::StrCat("error ", s.error_code(), ": ", s.error_message());
    uint64_t total = 0, requests = 0;
    for (const v1::UsagePoint& p : response.points()) {
      total += p.totals().total_tokens();
      requests += p.totals().requests();
    }
    return absl::StrCat("total=", total, " requests=", requests);
  }

  // Polls the shard until it counted `expected`; returns the last answer.
  std::string CountedAtShardEventually(const std::string& expected) {
    std::string last;
    Eventually([&] { return (last = CountedAtShard()) == expected; });
    return last;
  }

  std::string dir_;
  std::unique_ptr<aggregator::AggregatorServer> shard_;
  int shard_port_ = 0;
  std::unique_ptr<v1::UsageService::Stub> usage_;
  std::unique_ptr<sidecar::SidecarServer> sidecar_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, ReportedUsageIsCountedAtTheShard) {
  ASSERT_TRUE(client_->Report({UsageOf("call-1", 100, 20), UsageOf("", 30, 5)}).ok());
  ASSERT_TRUE(client_->Report(UsageOf("call-3", 10, 0)).ok());
  EXPECT_EQ(CountedAtShardEventually("total=165 requests=3"), "total=165 requests=3");
}

TEST_F(ClientTest, ReportWithTheSameEventIdCountsOnceAndGeneratedIdsAreDistinct) {
  const Usage with_id = UsageOf("call-1", 100, 0);
  const Usage without_id = UsageOf("", 10, 0);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client_->Report(with_id).ok());
    ASSERT_TRUE(client_->Report(without_id).ok());
  }
  // Counted: call-1 once (100), the id-less usage twice (2 x 10).
  EXPECT_EQ(CountedAtShardEventually("total=120 requests=3"), "total=120 requests=3");
}

TEST_F(ClientTest, ReportRejectsAMalformedEventNamingIt) {
  Usage bad = UsageOf("call-2", 10, 0);
  bad.model = "";
  const absl::Status s = client_->Report({UsageOf("call-1", 10, 0), bad});
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(std::string(s.message()).find("events[1].model"), std::string::npos) << s;

  EXPECT_TRUE(client_->Report(std::vector<Usage>{}).ok());
  const std::vector<Usage> too_many(kMaxEventsPerReport + 1, UsageOf("", 1, 0));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->Report(too_many)));
  // Nothing of the rejected calls was queued: a later event is the only one counted.
  ASSERT_TRUE(client_->Report(UsageOf("call-3", 7, 0)).ok());
  EXPECT_EQ(CountedAtShardEventually("total=7 requests=1"), "total=7 requests=1");
}

TEST_F(ClientTest, ReserveThenCommitRecordsTheActualUsage) {
  auto r = client_->Reserve({.scope = kScope, .estimate = {.input = 200, .output = 100}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->allowed());
  EXPECT_FALSE(r->decision().fallback);
  EXPECT_TRUE(r->holds());
  EXPECT_EQ(r->id().size(), 32u);  // Generated.
  EXPECT_GT(r->decision().expires_at, absl::Now());
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=300");

  auto committed = r->Commit({.input = 150, .output = 170});  // More than estimated: recorded.
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_TRUE(committed->reservation_was_open);
  EXPECT_FALSE(committed->queued);
  EXPECT_FALSE(r->holds());
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=320 outstanding=0");

  auto again = r->Commit({.input = 150, .output = 170});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=320 outstanding=0");
}

TEST_F(ClientTest, ReservationDestroyedWithoutCommitReleasesTheHold) {
  {
    auto r = client_->Reserve({.reservation_id = "llm-call-1",
                               .scope = kScope,
                               .estimate = {.input = 400},
                               .ttl = absl::Minutes(10)});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->allowed());
    EXPECT_EQ(r->id(), "llm-call-1");
    EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=400");
    // The LLM call fails here; the guard goes out of scope.
  }
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=0");
}

TEST_F(ClientTest, MovedReservationReleasesOnceFromItsLastOwner) {
  std::optional<Reservation> last;
  {
    std::vector<Reservation> kept;
    {
      auto r = client_->Reserve({.scope = kScope, .estimate = {.input = 100}});
      ASSERT_TRUE(r.ok()) << r.status();
      kept.push_back(*std::move(r));
    }  // The moved-from StatusOr is gone: nothing released.
    EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=100");
    last.emplace(std::move(kept[0]));
    EXPECT_TRUE(absl::IsFailedPrecondition(kept[0].Commit({}).status()));
  }  // The moved-from element is gone: nothing released.
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=100");
  ASSERT_TRUE(last->holds());

  // Assigning over a guard releases what it held.
  auto other = client_->Reserve({.scope = kScope, .estimate = {.input = 50}});
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=150");
  *last = *std::move(other);
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=50");
  last.reset();
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=0");
}

TEST_F(ClientTest, ExplicitReleaseReturnsTheHoldOnce) {
  auto r = client_->Reserve({.scope = kScope, .estimate = {.input = 70}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->Release().ok());
  EXPECT_FALSE(r->holds());
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=0 outstanding=0");
  EXPECT_TRUE(r->Release().ok());  // Nothing held: nothing sent.
}

TEST_F(ClientTest, DeniedReserveIsAnAnswerWithRetryAfterAndHoldsNothing) {
  ASSERT_TRUE(client_->Report(UsageOf("big-call", 900, 0)).ok());
  ASSERT_TRUE(Eventually([&] { return CountedAtShard() == "total=900 requests=1"; }));

  auto denied = client_->Reserve({.scope = kScope, .estimate = {.input = 150}});
  ASSERT_TRUE(denied.ok()) << denied.status();
  EXPECT_FALSE(denied->allowed());
  EXPECT_FALSE(denied->holds());
  EXPECT_GT(denied->retry_after(), absl::ZeroDuration());  // The day window rolls over.
  ASSERT_EQ(denied->decision().limits.size(), 1u);
  EXPECT_TRUE(denied->decision().limits[0].exceeded);
  EXPECT_EQ(denied->decision().limits[0].remaining, 100u);
  EXPECT_EQ(denied->decision().limits[0].metric, Metric::kTotalTokens);
  EXPECT_EQ(denied->decision().limits[0].window, Window::kDay);
  EXPECT_TRUE(absl::IsFailedPrecondition(denied->Commit({.input = 1}).status()));
  EXPECT_EQ(RenderLimit(client_->Check(kScope, {})), "used=900 outstanding=0");

  auto fits = client_->Reserve({.scope = kScope, .estimate = {.input = 100}});
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_TRUE(fits->allowed());
  auto check = client_->Check(kScope, {.input = 1});
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_FALSE(check->allowed);
}

TEST_F(ClientTest, UnixSocketTargetWorks) {
  auto client = Client::Connect("unix:" + socket_path(), Options());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(client->Report(UsageOf("via-unix", 40, 2)).ok());
  auto r = client->Reserve({.scope = kScope, .estimate = {.input = 10}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->allowed());
  ASSERT_TRUE(r->Commit({.input = 8}).ok());
  EXPECT_EQ(CountedAtShardEventually("total=50 requests=2"), "total=50 requests=2");
}

TEST_F(ClientTest, AbsentSidecarFailsFastWithUnavailable) {
  ClientOptions options;
  options.deadline = absl::Milliseconds(300);
  auto client = Client::Connect("unix:" + dir_ + "/nobody-listens.sock", options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  const absl::Status s = client->Report(UsageOf("lost", 1, 1));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(std::string(s.message()).find("attempts"), std::string::npos) << s;  // Retried.
  EXPECT_LT(took, options.deadline + absl::Seconds(1));
  EXPECT_TRUE(absl::IsUnavailable(client->Reserve({.scope = kScope}).status()));
  EXPECT_TRUE(absl::IsUnavailable(client->Check(kScope, {}).status()));
}

TEST_F(ClientTest, HungSidecarAnswersDeadlineExceededAtTheDeadline) {
  // A socket that accepts connections (kernel backlog) but never speaks HTTP/2.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  ClientOptions options;
  options.deadline = absl::Milliseconds(300);
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", ntohs(addr.sin_port)), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  const absl::Status s = client->Report(UsageOf("stuck", 1, 1));
  const absl::Duration took = absl::Now() - start;
  close(fd);
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_GE(took, options.deadline - absl::Milliseconds(10));
  EXPECT_LT(took, options.deadline + absl::Seconds(1));
}

TEST_F(ClientTest, WaitForReadyWaitsForTheSidecarUntilTheDeadline) {
  ClientOptions options;
  options.deadline = absl::Milliseconds(300);
  options.wait_for_ready = true;
  auto client = Client::Connect("unix:" + dir_ + "/nobody-listens.sock", options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  const absl::Status s = client->Report(UsageOf("waiting", 1, 1));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_GE(took, options.deadline - absl::Milliseconds(10));
  EXPECT_LT(took, options.deadline + absl::Seconds(1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(client->WaitForReady(absl::Milliseconds(50))));
  EXPECT_TRUE(client_->WaitForReady(absl::Seconds(5)).ok());
}

TEST_F(ClientTest, CommitIsQueuedWhileTheShardIsDownAndDeliveredLater) {
  auto r = client_->Reserve({.scope = kScope, .estimate = {.input = 300}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->allowed());
  StopShard();
  auto committed = r->Commit({.input = 120});
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_TRUE(committed->queued);
  EXPECT_FALSE(r->holds());
  ASSERT_TRUE(RestartShard().ok());
  std::string last;
  EXPECT_TRUE(Eventually([&] {
    return (last = RenderLimit(client_->Check(kScope, {}))) == "used=120 outstanding=0";
  })) << last;
}

TEST_F(ClientTest, FallbackReservationCommittedDuringTheOutageCountsOnceTheShardIsBack) {
  StopShard();
  auto r = client_->Reserve(
      {.reservation_id = "during-outage", .scope = kScope, .estimate = {.input = 300}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->allowed());  // No policy known yet: the sidecar's default failure mode, open.
  EXPECT_TRUE(r->decision().fallback);
  EXPECT_FALSE(r->decision().fallback_reason.empty());
  EXPECT_TRUE(r->holds());
  auto committed = r->Commit({.input = 90, .output = 10});
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_TRUE(committed->queued);    // Deferred by the sidecar; the shard answers NOT_FOUND
  ASSERT_TRUE(RestartShard().ok());  // later, and the sidecar turns it into a usage event.
  EXPECT_EQ(CountedAtShardEventually("total=100 requests=1"), "total=100 requests=1");
}

TEST_F(ClientTest, FallbackReservationCommittedAfterTheOutageCountsOnce) {
  StopShard();
  auto r = client_->Reserve(
      {.reservation_id = "before-recovery", .scope = kScope, .estimate = {.input = 300}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->decision().fallback);
  ASSERT_TRUE(RestartShard().ok());
  ASSERT_TRUE(client_->WaitForReady(absl::Seconds(5)).ok());
  auto committed = r->Commit({.input = 40, .output = 2});
  ASSERT_TRUE(committed.ok()) << committed.status();
  auto again = r->Commit({.input = 40, .output = 2});  // A retry must not count twice.
  ASSERT_TRUE(again.ok() || absl::IsNotFound(again.status())) << again.status();
  EXPECT_EQ(CountedAtShardEventually("total=42 requests=1"), "total=42 requests=1");
}

TEST(ClientConnectTest, RejectsABadTargetAndBadOptions) {
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Connect("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Connect("unix:").status()));
  ClientOptions options;
  options.max_attempts = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Connect("127.0.0.1:1", options).status()));
  options = {};
  options.deadline = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Connect("127.0.0.1:1", options).status()));
}

TEST(NewIdTest, Is32HexDigitsAndUnique) {
  const std::string a = NewId(), b = NewId();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos) << a;
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace tokenmeter::client
