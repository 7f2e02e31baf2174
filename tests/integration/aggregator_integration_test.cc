// Integration tests of one aggregator shard: a real server started in-process on 127.0.0.1:0
// (temporary data directory and policy file, fake clock), driven only through the generated
// gRPC stubs, with a deadline on every call.
//
// The shard is shard 0 of 2: `tenant_` is owned by it, `foreign_` by shard 1. Its fake clock
// stands at 2025-06-15 12:00:05 UTC (t0_) unless a test moves it. Every test starts its own
// shard, so tests are independent and may run in any order or in parallel processes.
//
// One file on purpose: the sections (ingest, quota, usage, admin and reload, whole-shard
// properties) mirror the public API and share one fixture and one policy file.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/integration/test_cluster.h"

namespace tokenmeter::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kProducer[] = "sidecar-a";

// The policy file of every test: a tenant-wide daily budget, a per-team sliding-minute budget
// of `team_minute_tokens` (warn at 80%), a Berlin-time cost budget for one team (so
// Europe/Berlin calendar buckets are kept), and a price table.
std::string PolicyYaml(const std::string& tenant, uint64_t team_minute_tokens) {
  return absl::StrCat(R"(policies:
  - id: tenant-day
    selector: {tenant: )",
                      tenant, R"(}
    limits:
      - {metric: total_tokens, window: day, amount: 1000000}
  - id: team-minute
    selector: {tenant: )",
                      tenant, R"(, team: "*"}
    limits:
      - {metric: total_tokens, window: minute, amount: )",
                      team_minute_tokens, R"(}
      - {metric: requests, window: hour, amount: 50}
    warn_percents: [80]
  - id: finance-month
    selector: {tenant: )",
                      tenant, R"(, team: finance}
    limits:
      - {metric: cost_usd, window: month, amount: "100.00"}
    time_zone: Europe/Berlin
prices:
  version: 3
  models:
    - {provider: openai, model: gpt-4o, input: "2.50", cached_input: "1.25", output: "10.00"}
    - {provider: anthropic, model: claude-sonnet, input: "3.00", output: "15.00"}
)");
}

class AggregatorIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tenant_ = TenantOwnedBy("acme", 0, 2);
    foreign_ = TenantOwnedBy("globex", 1, 2);
    TestShard::Options options;
    options.policy_yaml = PolicyYaml(tenant_, 1000);
    options.max_batch_events = 100;
    shard_ = std::make_unique<TestShard>(options);
    const absl::Status started = shard_->Start();
    ASSERT_TRUE(started.ok()) << started;
    t0_ = shard_->clock().Now();
  }

  // An event of tenant_ that happened 5 s before t0_ (in the 12:00:00 sub-bucket).
  v1::UsageEvent Event(const std::string& id) {
    return MakeEvent({.id = id, .tenant = tenant_, .at = t0_ - absl::Seconds(5)});
  }

  v1::Scope Scope(const std::string& team = "core", const std::string& user = "alice") {
    v1::Scope s;
    s.set_tenant(tenant_);
    s.set_team(team);
    s.set_user(user);
    s.set_provider("openai");
    s.set_model("gpt-4o");
    return s;
  }

  grpc::Status Check(const v1::Scope& scope, const v1::TokenCounts& usage, v1::QuotaDecision* d) {
    v1::CheckRequest request;
    *request.mutable_scope() = scope;
    *request.mutable_usage() = usage;
    return CallWithDeadline(shard_->quota(), &v1::QuotaService::Stub::Check, request, d);
  }

  grpc::Status Reserve(const std::string& id, const v1::Scope& scope,
                       const v1::TokenCounts& estimate, v1::QuotaDecision* d,
                       uint32_t ttl_ms = 10'000) {
    v1::ReserveRequest request;
    request.set_reservation_id(id);
    *request.mutable_scope() = scope;
    *request.mutable_estimate() = estimate;
    request.set_ttl_ms(ttl_ms);
    return CallWithDeadline(shard_->quota(), &v1::QuotaService::Stub::Reserve, request, d);
  }

  grpc::Status Commit(const std::string& id, const v1::TokenCounts& actual,
                      v1::CommitResponse* response, const std::string& tenant = "") {
    v1::CommitRequest request;
    request.set_reservation_id(id);
    request.set_tenant(tenant.empty() ? tenant_ : tenant);
    *request.mutable_actual() = actual;
    return CallWithDeadline(shard_->quota(), &v1::QuotaService::Stub::Commit, request, response);
  }

  grpc::Status Release(const std::string& id, v1::ReleaseResponse* response,
                       const std::string& tenant = "") {
    v1::ReleaseRequest request;
    request.set_reservation_id(id);
    request.set_tenant(tenant.empty() ? tenant_ : tenant);
    return CallWithDeadline(shard_->quota(), &v1::QuotaService::Stub::Release, request, response);
  }

  // The team-minute total-tokens limit of core/alice as a zero-usage Check sees it.
  v1::LimitStatus TeamMinute() {
    v1::QuotaDecision d;
    const grpc::Status s = Check(Scope(), Tokens(0, 0), &d);
    EXPECT_TRUE(s.ok()) << s.error_message();
    for (const v1::LimitStatus& l : d.limits()) {
      if (l.policy_id() == "team-minute" && l.metric() == v1::METRIC_TOTAL_TOKENS) return l;
    }
    ADD_FAILURE() << "no team-minute limit in " << d.ShortDebugString();
    return v1::LimitStatus();
  }

  grpc::Status GetUsage(const v1::Scope& scope, v1::Granularity granularity,
                        const std::string& time_zone, v1::GetUsageResponse* response) {
    v1::GetUsageRequest request;
    *request.mutable_scope() = scope;
    request.set_granularity(granularity);
    request.mutable_from()->set_seconds(absl::ToUnixSeconds(t0_ - absl::Hours(26)));
    request.mutable_to()->set_seconds(absl::ToUnixSeconds(t0_ + absl::Hours(1)));
    request.set_time_zone(time_zone);
    return CallWithDeadline(shard_->usage(), &v1::UsageService::Stub::GetUsage, request, response);
  }

  // Everything counted for tenant_ on the UTC day of t0_, rendered.
  std::string DayTotals() {
    v1::Scope scope;
    scope.set_tenant(tenant_);
    v1::GetUsageResponse response;
    const grpc::Status s = GetUsage(scope, v1::GRANULARITY_DAY, "", &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (response.points_size() == 0) return RenderTotals(v1::UsageTotals());
    EXPECT_EQ(response.points_size(), 1);
    return RenderTotals(response.points(0).totals());
  }

  // Stops the shard with a 10 s grace; aborts the test binary if Shutdown() hangs for 30 s
  // (the stopping thread still uses the shard, so nothing else would be safe).
  void StopWithWatchdog() {
    absl::Notification stopped;
    std::thread stopper([&] {
      shard_->Stop(absl::Seconds(10));
      stopped.Notify();
    });
    if (!stopped.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      std::fputs("Shutdown() did not return within 30 s with an open ingest stream\n", stderr);
      std::abort();
    }
    stopper.join();
  }

  std::string tenant_;
  std::string foreign_;
  std::unique_ptr<TestShard> shard_;
  absl::Time t0_;
};

// ---------------------------------------------------------------------------------------------
// Ingest

TEST_F(AggregatorIntegrationTest, IngestAcksAppliedBatchesInOrderWithCounts) {
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(
                MakeBatch(kProducer, 1, 1, {Event("e1"), Event("e2"), Event("e3")}))),
            "seq=1 APPLIED expected=2 applied=3 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e4"), Event("e5")}))),
            "seq=2 APPLIED expected=3 applied=2 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  // 5 events of 100 input + 50 output tokens at $2.50 / $10 per Mtok: 750 micro-USD each.
  EXPECT_EQ(DayTotals(),
            "in=500 cached=0 out=250 reasoning=0 total=750 requests=5 cost=3750 unpriced=0");
}

TEST_F(AggregatorIntegrationTest, IngestResentSeqIsDuplicateAndAppliesNothing) {
  IngestStream stream(&shard_->ingest());
  const v1::IngestBatch batch = MakeBatch(kProducer, 1, 1, {Event("e1"), Event("e2")});
  EXPECT_EQ(RenderAck(stream.SendAndRead(batch)),
            "seq=1 APPLIED expected=2 applied=2 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(stream.SendAndRead(batch)),
            "seq=1 DUPLICATE expected=2 applied=0 dup=0 rejected=0");
  // The stream still works.
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e3")}))),
            "seq=2 APPLIED expected=3 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=3 "));
}

TEST_F(AggregatorIntegrationTest, IngestSkippedSeqIsGapNamingExpectedSeq) {
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 1, {Event("e1")}))),
            "seq=1 APPLIED expected=2 applied=1 dup=0 rejected=0");
  const v1::IngestAck gap = stream.SendAndRead(MakeBatch(kProducer, 1, 3, {Event("e3")}));
  EXPECT_EQ(RenderAck(gap), "seq=3 GAP expected=2 applied=0 dup=0 rejected=0");
  EXPECT_THAT(gap.detail(), HasSubstr("expected seq 2"));
  // Resending from expected_seq works, and the refused batch's event was not counted.
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e2")}))),
            "seq=2 APPLIED expected=3 applied=1 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 3, {Event("e3")}))),
            "seq=3 APPLIED expected=4 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=3 "));
}

TEST_F(AggregatorIntegrationTest, IngestRetriedEventIdInLaterBatchCountsOnce) {
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 1, {Event("e1"), Event("e2")}))),
            "seq=1 APPLIED expected=2 applied=2 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e2"), Event("e3")}))),
            "seq=2 APPLIED expected=3 applied=1 dup=1 rejected=0");
  // A retry from another producer is caught too: dedup is per tenant, not per producer.
  IngestStream other(&shard_->ingest());
  EXPECT_EQ(RenderAck(other.SendAndRead(MakeBatch("sidecar-b", 1, 1, {Event("e1")}))),
            "seq=1 APPLIED expected=2 applied=0 dup=1 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_TRUE(other.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=3 "));
}

TEST_F(AggregatorIntegrationTest, IngestLowerEpochIsFencedAndAppliesNothing) {
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 2, 1, {Event("e1")}))),
            "seq=1 APPLIED expected=2 applied=1 dup=0 rejected=0");
  const v1::IngestAck fenced = stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e2")}));
  EXPECT_EQ(RenderAck(fenced), "seq=2 FENCED expected=2 applied=0 dup=0 rejected=0");
  EXPECT_THAT(fenced.detail(), HasSubstr("epoch 1 is older than epoch 2"));
  // e2 was not counted (nor its dedup key written): the current epoch's batch applies it.
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 2, 2, {Event("e2")}))),
            "seq=2 APPLIED expected=3 applied=1 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 3, 3, {Event("e3")}))),
            "seq=3 APPLIED expected=4 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=3 "));
}

TEST_F(AggregatorIntegrationTest, IngestBatchWithForeignTenantIsNotOwnerAndAppliesNothing) {
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 1, {Event("e1")}))),
            "seq=1 APPLIED expected=2 applied=1 dup=0 rejected=0");
  v1::UsageEvent foreign = Event("f1");
  foreign.set_tenant(foreign_);
  const v1::IngestAck refused =
      stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e2"), foreign}));
  EXPECT_EQ(refused.seq(), 2u);
  EXPECT_EQ(refused.outcome(), v1::IngestAck::NOT_OWNER);
  EXPECT_EQ(refused.applied_events(), 0u);
  EXPECT_THAT(refused.detail(), HasSubstr(absl::StrCat("\"", foreign_, "\" is owned by shard 1")));
  // Nothing of the batch was applied: seq 2 is still expected and e2 is still new.
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {Event("e2")}))),
            "seq=2 APPLIED expected=3 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=2 "));
}

TEST_F(AggregatorIntegrationTest, IngestUnusableBatchIsInvalidAndAppliesNothing) {
  IngestStream stream(&shard_->ingest());
  std::vector<v1::UsageEvent> too_many;
  for (int i = 0; i < 101; ++i) too_many.push_back(Event(absl::StrCat("big-", i)));
  const v1::IngestAck oversized = stream.SendAndRead(MakeBatch(kProducer, 1, 1, too_many));
  EXPECT_EQ(oversized.seq(), 1u);
  EXPECT_EQ(oversized.outcome(), v1::IngestAck::INVALID);
  EXPECT_THAT(oversized.detail(), HasSubstr("1..100 events, got 101"));
  const v1::IngestAck seq_zero = stream.SendAndRead(MakeBatch(kProducer, 1, 0, {Event("e1")}));
  EXPECT_EQ(seq_zero.outcome(), v1::IngestAck::INVALID);
  EXPECT_THAT(seq_zero.detail(), HasSubstr("seq"));
  const v1::IngestAck bad_producer =
      stream.SendAndRead(MakeBatch("bad producer", 1, 1, {Event("e1")}));
  EXPECT_EQ(bad_producer.outcome(), v1::IngestAck::INVALID);
  EXPECT_THAT(bad_producer.detail(), HasSubstr("producer_id"));
  // Nothing was applied: seq 1 is still expected and big-0 is still new.
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 1, {Event("big-0")}))),
            "seq=1 APPLIED expected=2 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=1 "));
}

TEST_F(AggregatorIntegrationTest, IngestMalformedEventsAreDeadLetteredAndTheRestCounted) {
  v1::UsageEvent bad_charset = Event("bad-charset");
  bad_charset.set_team("core team");
  v1::UsageEvent bad_subset = Event("bad-subset");
  bad_subset.mutable_tokens()->set_cached_input(101);  // input is 100.
  v1::UsageEvent in_future = Event("bad-future");
  in_future.mutable_occurred_at()->set_seconds(absl::ToUnixSeconds(t0_ + absl::Hours(1)));
  IngestStream stream(&shard_->ingest());
  EXPECT_EQ(RenderAck(stream.SendAndRead(
                MakeBatch(kProducer, 1, 1,
                          {Event("good-1"), bad_charset, bad_subset, in_future, Event("good-2")}))),
            "seq=1 APPLIED expected=2 applied=2 dup=0 rejected=3");

  v1::ListDeadLettersRequest request;
  request.set_tenant(tenant_);
  v1::ListDeadLettersResponse response;
  ASSERT_TRUE(CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::ListDeadLetters, request,
                               &response)
                  .ok());
  std::vector<std::string> letters;
  for (const v1::DeadLetter& l : response.dead_letters()) {
    letters.push_back(absl::StrCat(l.event().event_id(), " ", l.reason(), " ", l.detail()));
    EXPECT_EQ(l.producer_id(), kProducer);
    EXPECT_EQ(l.received_at_unix_ms(), absl::ToUnixMillis(t0_));
  }
  std::sort(letters.begin(), letters.end());
  EXPECT_THAT(letters, ElementsAre(StartsWith("bad-charset invalid_team team: "),
                                   StartsWith("bad-future in_future occurred_at: "),
                                   StartsWith("bad-subset token_subset tokens.cached_input: ")));

  // The stream still works, and a corrected retry of a refused event is counted (refused
  // events leave no dedup key behind).
  bad_subset.mutable_tokens()->set_cached_input(10);
  EXPECT_EQ(RenderAck(stream.SendAndRead(MakeBatch(kProducer, 1, 2, {bad_subset}))),
            "seq=2 APPLIED expected=3 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=3 "));
}

TEST_F(AggregatorIntegrationTest, IngestPipelinedBatchesAreAckedInSeqOrder) {
  constexpr int kBatches = 50;
  IngestStream stream(&shard_->ingest());
  for (int seq = 1; seq <= kBatches; ++seq) {
    ASSERT_TRUE(stream.Send(
        MakeBatch(kProducer, 1, seq,
                  {Event(absl::StrCat("p", seq, "-a")), Event(absl::StrCat("p", seq, "-b"))})));
  }
  for (int seq = 1; seq <= kBatches; ++seq) {
    const std::optional<v1::IngestAck> ack = stream.Read();
    ASSERT_TRUE(ack.has_value()) << "stream ended before the ack of seq " << seq;
    EXPECT_EQ(RenderAck(*ack), absl::StrCat("seq=", seq, " APPLIED expected=", seq + 1,
                                            " applied=2 dup=0 rejected=0"));
  }
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=100 "));
}

// ---------------------------------------------------------------------------------------------
// Quota

TEST_F(AggregatorIntegrationTest, QuotaCheckListsEveryMatchingLimitAndChangesNothing) {
  v1::QuotaDecision d;
  ASSERT_TRUE(Check(Scope(), Tokens(100, 50), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::ALLOWED);
  std::vector<std::string> limits;
  for (const v1::LimitStatus& l : d.limits()) {
    limits.push_back(absl::StrCat(l.policy_id(), " ", l.scope(), " ", v1::Metric_Name(l.metric()),
                                  "/", v1::Window_Name(l.window()), " limit=", l.limit(),
                                  " used=", l.used(), " remaining=", l.remaining(),
                                  " requested=", l.requested(), " exceeded=", l.exceeded()));
  }
  const std::string t = absl::StrCat("tenant=", tenant_);
  EXPECT_THAT(limits,
              ElementsAre(absl::StrCat("tenant-day ", t,
                                       " METRIC_TOTAL_TOKENS/WINDOW_DAY limit=1000000 "
                                       "used=0 remaining=1000000 requested=150 exceeded=0"),
                          absl::StrCat("team-minute ", t,
                                       "/team=core METRIC_TOTAL_TOKENS/WINDOW_MINUTE "
                                       "limit=1000 used=0 remaining=1000 requested=150 exceeded=0"),
                          absl::StrCat("team-minute ", t,
                                       "/team=core METRIC_REQUESTS/WINDOW_HOUR "
                                       "limit=50 used=0 remaining=50 requested=1 exceeded=0")));
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(TeamMinute().used(), 0u);
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=0 "));
}

TEST_F(AggregatorIntegrationTest, QuotaReserveHoldsCommitCountsReleaseReturns) {
  v1::QuotaDecision d;
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(300, 100), &d, 10'000).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::ALLOWED);
  EXPECT_EQ(d.expires_at_unix_ms(), absl::ToUnixMillis(t0_ + absl::Seconds(10)));
  EXPECT_EQ(TeamMinute().outstanding(), 400u);

  v1::CommitResponse committed;
  ASSERT_TRUE(Commit("r1", Tokens(250, 50), &committed).ok());
  EXPECT_TRUE(committed.reservation_was_open());
  EXPECT_FALSE(committed.duplicate());
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(TeamMinute().used(), 300u);  // The actual usage, not the estimate.

  ASSERT_TRUE(Reserve("r2", Scope(), Tokens(500, 0), &d).ok());
  EXPECT_EQ(TeamMinute().outstanding(), 500u);
  v1::ReleaseResponse released;
  ASSERT_TRUE(Release("r2", &released).ok());
  EXPECT_TRUE(released.reservation_was_open());
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(TeamMinute().used(), 300u);  // Release records nothing.
  ASSERT_TRUE(Release("r2", &released).ok());
  EXPECT_FALSE(released.reservation_was_open());
  // 250 input + 50 output at $2.50 / $10 per Mtok = 625 + 500 micro-USD.
  EXPECT_EQ(DayTotals(),
            "in=250 cached=0 out=50 reasoning=0 total=300 requests=1 cost=1125 unpriced=0");
}

TEST_F(AggregatorIntegrationTest, QuotaDeniedHasRetryAfterAndExceededLimitsFirst) {
  v1::QuotaDecision d;
  v1::CommitResponse committed;
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(500, 300), &d).ok());
  ASSERT_TRUE(Commit("r1", Tokens(500, 300), &committed).ok());

  ASSERT_TRUE(Check(Scope(), Tokens(200, 100), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::DENIED);
  // The usage sits in the 12:00:00 sub-bucket, which leaves the sliding minute (7 sub-buckets)
  // at 12:01:10: 65 s after t0 = 12:00:05.
  EXPECT_EQ(d.retry_after_ms(), 65'000u);
  ASSERT_EQ(d.limits_size(), 3);
  const v1::LimitStatus& first = d.limits(0);
  EXPECT_EQ(first.policy_id(), "team-minute");
  EXPECT_EQ(first.metric(), v1::METRIC_TOTAL_TOKENS);
  EXPECT_EQ(first.window(), v1::WINDOW_MINUTE);
  EXPECT_TRUE(first.exceeded());
  EXPECT_EQ(first.used(), 800u);
  EXPECT_EQ(first.remaining(), 200u);
  EXPECT_EQ(first.requested(), 300u);
  EXPECT_EQ(first.warn_percent(), 80u);
  EXPECT_FALSE(d.limits(1).exceeded());
  EXPECT_FALSE(d.limits(2).exceeded());
  EXPECT_EQ(d.limits(1).remaining(), 1'000'000u - 800u);

  // A denied Reserve holds nothing and is not stored.
  ASSERT_TRUE(Reserve("r2", Scope(), Tokens(200, 100), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::DENIED);
  EXPECT_GT(d.retry_after_ms(), 0u);
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(Commit("r2", Tokens(1, 1), &committed).error_code(), grpc::StatusCode::NOT_FOUND);
  // Exactly the remaining budget fits.
  ASSERT_TRUE(Reserve("r3", Scope(), Tokens(200, 0), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::ALLOWED);
}

TEST_F(AggregatorIntegrationTest, QuotaReserveAndCommitAreIdempotent) {
  v1::QuotaDecision first;
  v1::QuotaDecision again;
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(400, 200), &first).ok());
  shard_->clock().Advance(absl::Seconds(1));
  // A repeat (even with another estimate) returns the first decision and holds nothing more.
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(10, 0), &again).ok());
  EXPECT_EQ(again.ShortDebugString(), first.ShortDebugString());
  EXPECT_EQ(TeamMinute().outstanding(), 600u);

  v1::CommitResponse committed;
  ASSERT_TRUE(Commit("r1", Tokens(300, 200), &committed).ok());
  EXPECT_TRUE(committed.reservation_was_open());
  EXPECT_FALSE(committed.duplicate());
  ASSERT_TRUE(Commit("r1", Tokens(300, 200), &committed).ok());
  EXPECT_FALSE(committed.reservation_was_open());
  EXPECT_TRUE(committed.duplicate());
  // A Reserve after the commit still answers the first decision, holding nothing.
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(400, 200), &again).ok());
  EXPECT_EQ(again.ShortDebugString(), first.ShortDebugString());
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(TeamMinute().used(), 500u);
  EXPECT_THAT(DayTotals(), HasSubstr(" total=500 requests=1 "));
}

TEST_F(AggregatorIntegrationTest, QuotaExpiredReservationReturnsItsHold) {
  v1::QuotaDecision d;
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(400, 0), &d, 1'000).ok());
  EXPECT_EQ(TeamMinute().outstanding(), 400u);
  shard_->clock().Advance(absl::Seconds(2));
  EXPECT_TRUE(PollUntil([&] { return TeamMinute().outstanding() == 0; }));
  v1::ReleaseResponse released;
  ASSERT_TRUE(Release("r1", &released).ok());
  EXPECT_FALSE(released.reservation_was_open());
  // A late commit is recorded all the same, once.
  v1::CommitResponse committed;
  ASSERT_TRUE(Commit("r1", Tokens(100, 0), &committed).ok());
  EXPECT_FALSE(committed.reservation_was_open());
  EXPECT_FALSE(committed.duplicate());
  ASSERT_TRUE(Commit("r1", Tokens(100, 0), &committed).ok());
  EXPECT_TRUE(committed.duplicate());
  EXPECT_EQ(TeamMinute().used(), 100u);
}

TEST_F(AggregatorIntegrationTest, QuotaUnknownReservationIsNotFound) {
  v1::CommitResponse committed;
  const grpc::Status commit = Commit("never-reserved", Tokens(1, 1), &committed);
  EXPECT_EQ(commit.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(commit.error_message(), HasSubstr("never-reserved"));
  v1::ReleaseResponse released;
  EXPECT_EQ(Release("never-reserved", &released).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(DayTotals(), HasSubstr(" requests=0 "));
}

TEST_F(AggregatorIntegrationTest, ForeignTenantIsFailedPreconditionNamingTheOwner) {
  v1::Scope scope = Scope();
  scope.set_tenant(foreign_);
  const std::string owner = absl::StrCat("\"", foreign_, "\" is owned by shard 1 of 2");
  v1::QuotaDecision d;
  v1::CommitResponse committed;
  v1::ReleaseResponse released;
  v1::GetUsageResponse usage;
  v1::TopSpendersRequest top;
  top.set_tenant(foreign_);
  top.set_level(v1::LEVEL_TEAM);
  top.set_granularity(v1::GRANULARITY_DAY);
  v1::TopSpendersResponse spenders;
  v1::UpsertPolicyRequest upsert;
  upsert.mutable_policy()->set_id("p");
  upsert.mutable_policy()->mutable_selector()->set_tenant(foreign_);
  v1::Limit* limit = upsert.mutable_policy()->add_limits();
  limit->set_metric(v1::METRIC_TOTAL_TOKENS);
  limit->set_window(v1::WINDOW_DAY);
  limit->set_amount(10);
  v1::UpsertPolicyResponse upserted;
  const std::vector<std::pair<std::string, grpc::Status>> calls = {
      {"Check", Check(scope, Tokens(1, 1), &d)},
      {"Reserve", Reserve("r1", scope, Tokens(1, 1), &d)},
      {"Commit", Commit("r1", Tokens(1, 1), &committed, foreign_)},
      {"Release", Release("r1", &released, foreign_)},
      {"GetUsage", GetUsage(scope, v1::GRANULARITY_DAY, "", &usage)},
      {"TopSpenders",
       CallWithDeadline(shard_->usage(), &v1::UsageService::Stub::TopSpenders, top, &spenders)},
      {"UpsertPolicy",
       CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::UpsertPolicy, upsert, &upserted)},
  };
  for (const auto& [name, status] : calls) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << name;
    EXPECT_THAT(status.error_message(), HasSubstr(owner)) << name;
  }
}

TEST_F(AggregatorIntegrationTest, QuotaBadInputIsInvalidArgumentNamingTheField) {
  v1::QuotaDecision d;
  v1::CommitResponse committed;
  v1::Scope no_tenant = Scope();
  no_tenant.set_tenant("");
  v1::Scope bad_user = Scope("core", "bob smith");
  const std::vector<std::pair<std::string, grpc::Status>> calls = {
      {"scope.tenant", Check(no_tenant, Tokens(1, 1), &d)},
      {"scope.tenant", Reserve("r1", no_tenant, Tokens(1, 1), &d)},
      {"usage.output", Check(Scope(), Tokens(1, 1'000'000'001), &d)},
      {"estimate.input", Reserve("r1", Scope(), Tokens(1'000'000'001, 1), &d)},
      {"scope.user", Reserve("r1", bad_user, Tokens(1, 1), &d)},
      {"reservation_id", Reserve("bad id", Scope(), Tokens(1, 1), &d)},
      {"ttl_ms", Reserve("r1", Scope(), Tokens(1, 1), &d, 3'600'001)},
      {"actual.cached_input", Commit("r1", Tokens(1, 1, 2), &committed)},
  };
  for (const auto& [field, status] : calls) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(status.error_message(), StartsWith(field + ":")) << status.error_message();
  }
  // Nothing was held or counted.
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
  EXPECT_EQ(TeamMinute().used(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Usage

// Ingests four events and commits one reservation (see the comments for their windows).
class UsageIntegrationTest : public AggregatorIntegrationTest {
 protected:
  void SetUp() override {
    AggregatorIntegrationTest::SetUp();
    if (HasFatalFailure()) return;
    const absl::Time at_1200 = t0_ - absl::Seconds(5);   // Sub-bucket 12:00:00.
    const absl::Time at_1159 = t0_ - absl::Seconds(25);  // Sub-bucket 11:59:40.
    IngestStream stream(&shard_->ingest());
    const v1::IngestAck ack = stream.SendAndRead(MakeBatch(kProducer, 1, 1,
                                                           {MakeEvent({.id = "e1",
                                                                       .tenant = tenant_,
                                                                       .input = 1000,
                                                                       .cached_input = 200,
                                                                       .output = 500,
                                                                       .reasoning = 100,
                                                                       .at = at_1200}),
                                                            MakeEvent({.id = "e2",
                                                                       .tenant = tenant_,
                                                                       .user = "bob",
                                                                       .provider = "anthropic",
                                                                       .model = "claude-sonnet",
                                                                       .input = 2000,
                                                                       .output = 1000,
                                                                       .at = at_1159}),
                                                            MakeEvent({.id = "e3",
                                                                       .tenant = tenant_,
                                                                       .team = "research",
                                                                       .user = "carol",
                                                                       .input = 400,
                                                                       .output = 100,
                                                                       .at = at_1200}),
                                                            MakeEvent({.id = "e4",
                                                                       .tenant = tenant_,
                                                                       .team = "ops",
                                                                       .user = "dave",
                                                                       .provider = "local",
                                                                       .model = "llama-3",
                                                                       .input = 10,
                                                                       .output = 10,
                                                                       .at = at_1159})}));
    ASSERT_EQ(RenderAck(ack), "seq=1 APPLIED expected=2 applied=4 dup=0 rejected=0");
    ASSERT_TRUE(stream.Finish().ok());
    // Committed at t0 = 12:00:05: sub-bucket 12:00:00.
    v1::QuotaDecision d;
    v1::CommitResponse committed;
    ASSERT_TRUE(Reserve("q1", Scope("research", "carol"), Tokens(300, 200), &d).ok());
    ASSERT_EQ(d.result(), v1::QuotaDecision::ALLOWED) << d.ShortDebugString();
    ASSERT_TRUE(Commit("q1", Tokens(300, 200), &committed).ok());
  }

  v1::TopSpendersResponse Top(v1::Level level, v1::Metric metric, uint32_t limit = 10) {
    v1::TopSpendersRequest request;
    request.set_tenant(tenant_);
    request.set_level(level);
    request.set_metric(metric);
    request.set_granularity(v1::GRANULARITY_DAY);
    request.mutable_at()->set_seconds(absl::ToUnixSeconds(t0_));
    request.set_limit(limit);
    v1::TopSpendersResponse response;
    const grpc::Status s =
        CallWithDeadline(shard_->usage(), &v1::UsageService::Stub::TopSpenders, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
};

// Costs (micro-USD): e1 = 800 x 2.50 + 200 x 1.25 + 500 x 10 = 7250; e2 = 2000 x 3 + 1000 x 15
// = 21000; e3 = 400 x 2.50 + 100 x 10 = 2000; e4 unpriced; q1 = 300 x 2.50 + 200 x 10 = 2750.
TEST_F(UsageIntegrationTest, TimeSeriesEqualsIngestedPlusCommitted) {
  v1::Scope tenant;
  tenant.set_tenant(tenant_);
  v1::GetUsageResponse response;
  ASSERT_TRUE(GetUsage(tenant, v1::GRANULARITY_TEN_SECONDS, "", &response).ok());
  EXPECT_EQ(RenderSeries(response),
            "2025-06-15T11:59:40 in=2010 cached=0 out=1010 reasoning=0 total=3020 requests=2 "
            "cost=21000 unpriced=1 | "
            "2025-06-15T12:00:00 in=1700 cached=200 out=800 reasoning=100 total=2500 requests=3 "
            "cost=12000 unpriced=0");
  const std::string day =
      "in=3710 cached=200 out=1810 reasoning=100 total=5520 requests=5 cost=33000 unpriced=1";
  ASSERT_TRUE(GetUsage(tenant, v1::GRANULARITY_DAY, "UTC", &response).ok());
  EXPECT_EQ(RenderSeries(response), "2025-06-15T00:00:00 " + day);
  // A policy uses Europe/Berlin, so its days are kept too: they start at 22:00 UTC in summer.
  ASSERT_TRUE(GetUsage(tenant, v1::GRANULARITY_DAY, "Europe/Berlin", &response).ok());
  EXPECT_EQ(RenderSeries(response), "2025-06-14T22:00:00 " + day);

  v1::Scope research;
  research.set_tenant(tenant_);
  research.set_team("research");
  ASSERT_TRUE(GetUsage(research, v1::GRANULARITY_DAY, "", &response).ok());
  EXPECT_EQ(RenderSeries(response),
            "2025-06-15T00:00:00 in=700 cached=0 out=300 reasoning=0 total=1000 requests=2 "
            "cost=4750 unpriced=0");
  v1::Scope model;
  model.set_tenant(tenant_);
  model.set_model("gpt-4o");
  ASSERT_TRUE(GetUsage(model, v1::GRANULARITY_HOUR, "", &response).ok());
  EXPECT_EQ(RenderSeries(response),
            "2025-06-15T12:00:00 in=1700 cached=200 out=800 reasoning=100 total=2500 requests=3 "
            "cost=12000 unpriced=0");
}

TEST_F(UsageIntegrationTest, TopSpendersRanksTeamsUsersAndModels) {
  const v1::TopSpendersResponse teams = Top(v1::LEVEL_TEAM, v1::METRIC_TOTAL_TOKENS);
  EXPECT_EQ(RenderSpenders(teams), "team=core:4500, team=research:1000, team=ops:20");
  EXPECT_EQ(teams.window_start().seconds(),
            absl::ToUnixSeconds(absl::FromCivil(absl::CivilDay(2025, 6, 15), absl::UTCTimeZone())));
  EXPECT_EQ(RenderSpenders(Top(v1::LEVEL_USER, v1::METRIC_TOTAL_TOKENS)),
            "team=core/user=bob:3000, team=core/user=alice:1500, team=research/user=carol:1000, "
            "team=ops/user=dave:20");
  EXPECT_EQ(RenderSpenders(Top(v1::LEVEL_MODEL, v1::METRIC_TOTAL_TOKENS)),
            "model=claude-sonnet:3000, model=gpt-4o:2500, model=llama-3:20");
  EXPECT_EQ(RenderSpenders(Top(v1::LEVEL_MODEL, v1::METRIC_COST_MICRO_USD, 2)),
            "model=claude-sonnet:21000, model=gpt-4o:12000");
}

TEST_F(UsageIntegrationTest, CalendarZoneNoPolicyUsesIsFailedPrecondition) {
  v1::Scope tenant;
  tenant.set_tenant(tenant_);
  v1::GetUsageResponse response;
  const grpc::Status usage = GetUsage(tenant, v1::GRANULARITY_DAY, "Asia/Tokyo", &response);
  EXPECT_EQ(usage.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(usage.error_message(), HasSubstr("Asia/Tokyo"));
  v1::TopSpendersRequest request;
  request.set_tenant(tenant_);
  request.set_level(v1::LEVEL_TEAM);
  request.set_granularity(v1::GRANULARITY_MONTH);
  request.set_time_zone("Asia/Tokyo");
  v1::TopSpendersResponse top;
  EXPECT_EQ(CallWithDeadline(shard_->usage(), &v1::UsageService::Stub::TopSpenders, request, &top)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // Zone-free sub-buckets are served in any zone.
  EXPECT_TRUE(GetUsage(tenant, v1::GRANULARITY_TEN_SECONDS, "Asia/Tokyo", &response).ok());
}

// ---------------------------------------------------------------------------------------------
// Admin and policy reload

TEST_F(AggregatorIntegrationTest, AdminOverrideAppliesAtOnceAndDeleteRemovesIt) {
  v1::UpsertPolicyRequest upsert;
  v1::Policy* policy = upsert.mutable_policy();
  policy->set_id("tight");
  policy->mutable_selector()->set_tenant(tenant_);
  v1::Limit* limit = policy->add_limits();
  limit->set_metric(v1::METRIC_TOTAL_TOKENS);
  limit->set_window(v1::WINDOW_DAY);
  limit->set_amount(100);
  v1::UpsertPolicyResponse upserted;
  ASSERT_TRUE(
      CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::UpsertPolicy, upsert, &upserted)
          .ok());
  v1::QuotaDecision d;
  ASSERT_TRUE(Reserve("r1", Scope(), Tokens(100, 50), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::DENIED);
  ASSERT_GT(d.limits_size(), 0);
  EXPECT_EQ(d.limits(0).policy_id(), "tight");

  v1::ListPoliciesRequest list;
  list.set_tenant(tenant_);
  v1::ListPoliciesResponse listed;
  auto sources = [&] {
    listed.Clear();
    EXPECT_TRUE(
        CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::ListPolicies, list, &listed)
            .ok());
    std::vector<std::string> out;
    for (const v1::Policy& p : listed.policies()) out.push_back(p.id() + " " + p.source());
    return out;
  };
  const std::string file = "file:" + shard_->policy_path();
  EXPECT_THAT(sources(), ElementsAre("tenant-day " + file, "team-minute " + file,
                                     "finance-month " + file, "tight override"));

  v1::DeletePolicyRequest del;
  del.set_tenant(tenant_);
  del.set_id("tight");
  v1::DeletePolicyResponse deleted;
  ASSERT_TRUE(
      CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::DeletePolicy, del, &deleted).ok());
  EXPECT_TRUE(deleted.existed());
  ASSERT_TRUE(
      CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::DeletePolicy, del, &deleted).ok());
  EXPECT_FALSE(deleted.existed());
  EXPECT_THAT(sources(),
              ElementsAre("tenant-day " + file, "team-minute " + file, "finance-month " + file));
  ASSERT_TRUE(Reserve("r2", Scope(), Tokens(100, 50), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::ALLOWED);

  limit->set_amount(0);
  const grpc::Status invalid =
      CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::UpsertPolicy, upsert, &upserted);
  EXPECT_EQ(invalid.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(invalid.error_message(), HasSubstr("limits[0].amount"));
}

TEST_F(AggregatorIntegrationTest, AdminPricesComeFromTheFileAndVersionsOnlyGrow) {
  auto get_prices = [&] {
    v1::GetPricesResponse prices;
    EXPECT_TRUE(CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::GetPrices,
                                 v1::GetPricesRequest(), &prices)
                    .ok());
    std::vector<std::string> out = {absl::StrCat("version=", prices.version())};
    for (const v1::Price& p : prices.prices()) {
      out.push_back(absl::StrCat(p.provider(), "/", p.model(), " in=", p.input_per_mtok_micro_usd(),
                                 " cached=", p.cached_input_per_mtok_micro_usd(),
                                 " out=", p.output_per_mtok_micro_usd()));
    }
    std::sort(out.begin() + 1, out.end());
    return out;
  };
  const std::vector<std::string> file_prices = {
      "version=3", "anthropic/claude-sonnet in=3000000 cached=3000000 out=15000000",
      "openai/gpt-4o in=2500000 cached=1250000 out=10000000"};
  EXPECT_EQ(get_prices(), file_prices);

  v1::SetPricesRequest set;
  v1::Price* price = set.add_prices();
  price->set_provider("openai");
  price->set_model("gpt-4o");
  price->set_input_per_mtok_micro_usd(1);
  v1::SetPricesResponse done;
  for (uint64_t stale : {3u, 2u}) {
    set.set_version(stale);
    const grpc::Status s =
        CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::SetPrices, set, &done);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << stale;
    EXPECT_THAT(s.error_message(), HasSubstr("version")) << stale;
  }
  EXPECT_EQ(get_prices(), file_prices);
  set.set_version(4);
  ASSERT_TRUE(
      CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::SetPrices, set, &done).ok());
  EXPECT_THAT(get_prices(), ElementsAre("version=4", "openai/gpt-4o in=1 cached=0 out=0"));
}

TEST_F(AggregatorIntegrationTest, PolicyFileReloadAppliesAndBrokenFileKeepsTheOldPolicy) {
  v1::QuotaDecision d;
  ASSERT_TRUE(Check(Scope(), Tokens(600, 0), &d).ok());
  ASSERT_EQ(d.result(), v1::QuotaDecision::ALLOWED);

  ASSERT_TRUE(shard_->RewritePolicyFile(PolicyYaml(tenant_, 500)));
  EXPECT_TRUE(PollUntil([&] {
    return Check(Scope(), Tokens(600, 0), &d).ok() && d.result() == v1::QuotaDecision::DENIED;
  })) << "the lowered limit did not apply within 5 s";
  EXPECT_EQ(TeamMinute().limit(), 500u);

  // Line 5 names a window that does not exist.
  ASSERT_TRUE(shard_->RewritePolicyFile(absl::StrCat(R"(policies:
  - id: tenant-day
    selector: {tenant: )",
                                                     tenant_, R"(}
    limits:
      - {metric: total_tokens, window: weekly, amount: 10}
)")));
  v1::ListPoliciesResponse listed;
  EXPECT_TRUE(PollUntil([&] {
    listed.Clear();
    return CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::ListPolicies,
                            v1::ListPoliciesRequest(), &listed)
               .ok() &&
           !listed.last_reload_error().empty();
  })) << "the broken file was not reported within 5 s";
  EXPECT_THAT(listed.last_reload_error(), StartsWith(shard_->policy_path() + ":5: "));
  EXPECT_THAT(listed.last_reload_error(), HasSubstr("policies[0].limits[0].window"));
  // The policies of the last good file stay in force.
  EXPECT_EQ(listed.policies_size(), 3);
  ASSERT_TRUE(Check(Scope(), Tokens(600, 0), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::DENIED);
  EXPECT_EQ(TeamMinute().limit(), 500u);

  // A fixed file clears the error.
  ASSERT_TRUE(shard_->RewritePolicyFile(PolicyYaml(tenant_, 2000)));
  EXPECT_TRUE(PollUntil([&] { return TeamMinute().limit() == 2000; }));
  ASSERT_TRUE(CallWithDeadline(shard_->admin(), &v1::AdminService::Stub::ListPolicies,
                               v1::ListPoliciesRequest(), &listed)
                  .ok());
  EXPECT_EQ(listed.last_reload_error(), "");
}

// ---------------------------------------------------------------------------------------------
// Whole-shard properties

TEST_F(AggregatorIntegrationTest, BadInputNeverLosesAcceptedUsage) {
  IngestStream stream(&shard_->ingest());
  v1::UsageEvent foreign = Event("f1");
  foreign.set_tenant(foreign_);
  v1::UsageEvent malformed = Event("m1");
  malformed.mutable_tokens()->set_input(1'000'000'001);
  std::vector<v1::UsageEvent> too_many(101, Event("big"));
  const std::vector<std::pair<v1::IngestBatch, v1::IngestAck::Outcome>> batches = {
      {MakeBatch(kProducer, 1, 1, {Event("a1"), Event("a2")}), v1::IngestAck::APPLIED},
      {MakeBatch(kProducer, 1, 1, {Event("a1"), Event("a2")}), v1::IngestAck::DUPLICATE},
      {MakeBatch(kProducer, 1, 3, {Event("x1")}), v1::IngestAck::GAP},
      {MakeBatch(kProducer, 0, 2, {Event("x2")}), v1::IngestAck::FENCED},
      {MakeBatch(kProducer, 1, 2, {Event("x3"), foreign}), v1::IngestAck::NOT_OWNER},
      {MakeBatch(kProducer, 1, 2, too_many), v1::IngestAck::INVALID},
      {MakeBatch(kProducer, 1, 2, {Event("a3"), malformed, Event("a1")}), v1::IngestAck::APPLIED},
  };
  for (const auto& [batch, outcome] : batches) {
    EXPECT_EQ(stream.SendAndRead(batch).outcome(), outcome) << batch.seq();
  }
  EXPECT_TRUE(stream.Finish().ok());

  v1::QuotaDecision d;
  v1::CommitResponse committed;
  v1::ReleaseResponse released;
  v1::Scope foreign_scope = Scope();
  foreign_scope.set_tenant(foreign_);
  EXPECT_FALSE(Reserve("q0", Scope(), Tokens(1, 1), &d, 3'600'001).ok());
  EXPECT_FALSE(Reserve("q0", foreign_scope, Tokens(1, 1), &d).ok());
  EXPECT_FALSE(Commit("unknown", Tokens(1, 1), &committed).ok());
  EXPECT_FALSE(Commit("q0", Tokens(2, 1, 3), &committed).ok());
  ASSERT_TRUE(Reserve("q-denied", Scope(), Tokens(2000, 0), &d).ok());
  EXPECT_EQ(d.result(), v1::QuotaDecision::DENIED);
  ASSERT_TRUE(Reserve("q1", Scope(), Tokens(300, 100), &d).ok());
  ASSERT_TRUE(Commit("q1", Tokens(250, 50), &committed).ok());
  ASSERT_TRUE(Commit("q1", Tokens(250, 50), &committed).ok());  // Duplicate.
  ASSERT_TRUE(Reserve("q2", Scope(), Tokens(100, 0), &d).ok());
  ASSERT_TRUE(Release("q2", &released).ok());

  // Accepted: a1, a2, a3 (100 in + 50 out, 750 micro-USD each) and q1 (250 + 50, 1125).
  EXPECT_EQ(DayTotals(),
            "in=550 cached=0 out=200 reasoning=0 total=750 requests=4 cost=3375 unpriced=0");
  EXPECT_EQ(TeamMinute().outstanding(), 0u);
}

TEST_F(AggregatorIntegrationTest, HealthCheckReportsServing) {
  // grpc.health.v1 is called with the generic stub: Debian's gRPC ships no generated health
  // stubs. HealthCheckRequest{service: ""} encodes to no bytes; HealthCheckResponse{status:
  // SERVING (1)} to field 1, varint 1.
  grpc::GenericStub stub(shard_->channel());
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Slice empty("");
  const grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kCallDeadline + absl::Seconds(5)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(s.begin(), s.end());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

TEST_F(AggregatorIntegrationTest, ShutdownDrainsOpenStreamAndKeepsAcceptedDataDurable) {
  v1::QuotaDecision d;
  ASSERT_TRUE(Reserve("held", Scope(), Tokens(400, 0), &d, 3'600'000).ok());
  IngestStream stream(&shard_->ingest());
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    EXPECT_EQ(
        stream.SendAndRead(MakeBatch(kProducer, 1, seq, {Event(absl::StrCat("e", seq))})).outcome(),
        v1::IngestAck::APPLIED);
  }
  // Batch 4 is sent but its ack is not awaited: it may or may not be applied before the stop.
  ASSERT_TRUE(stream.Send(MakeBatch(kProducer, 1, 4, {Event("e4")})));

  StopWithWatchdog();
  // The draining shard acks what it read (so batch 4's ack, if it comes, says APPLIED) and
  // ends the stream with UNAVAILABLE, without waiting for the 10 s grace.
  const std::optional<v1::IngestAck> late = stream.Read();
  if (late.has_value()) {
    EXPECT_EQ(RenderAck(*late), "seq=4 APPLIED expected=5 applied=1 dup=0 rejected=0");
  }
  const grpc::Status ended = stream.Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE) << ended.error_message();

  const absl::Status restarted = shard_->Start();
  ASSERT_TRUE(restarted.ok()) << restarted;
  IngestStream again(&shard_->ingest());
  EXPECT_EQ(RenderAck(again.SendAndRead(MakeBatch(kProducer, 1, 3, {Event("e3")}))),
            late.has_value() ? "seq=3 DUPLICATE expected=5 applied=0 dup=0 rejected=0"
                             : "seq=3 DUPLICATE expected=4 applied=0 dup=0 rejected=0");
  EXPECT_EQ(RenderAck(again.SendAndRead(MakeBatch(kProducer, 1, 4, {Event("e4")}))),
            late.has_value() ? "seq=4 DUPLICATE expected=5 applied=0 dup=0 rejected=0"
                             : "seq=4 APPLIED expected=5 applied=1 dup=0 rejected=0");
  EXPECT_TRUE(again.Finish().ok());
  // Each of e1..e4 counted exactly once; the open reservation still holds its estimate.
  EXPECT_EQ(DayTotals(),
            "in=400 cached=0 out=200 reasoning=0 total=600 requests=4 cost=3000 unpriced=0");
  EXPECT_EQ(TeamMinute().outstanding(), 400u);
}

// Batches keep arriving while the shard drains: every batch acked APPLIED before the stop is
// durable, none is lost or counted twice once the producer resends everything after restart.
TEST_F(AggregatorIntegrationTest, ShutdownWhileBatchesKeepArrivingLosesAndDoublesNothing) {
  constexpr uint64_t kBatches = 300;
  auto batch = [&](uint64_t seq) {
    return MakeBatch(kProducer, 1, seq, {Event(absl::StrCat("w", seq))});
  };
  auto stream = std::make_unique<IngestStream>(&shard_->ingest());
  std::thread writer([&] {
    for (uint64_t seq = 1; seq <= kBatches && stream->Send(batch(seq)); ++seq) {
    }
  });
  absl::Notification some_acked;
  uint64_t last_applied = 0;  // Written by the reader only; read after it is joined.
  std::thread reader([&] {
    while (std::optional<v1::IngestAck> ack = stream->Read()) {
      if (ack->outcome() != v1::IngestAck::APPLIED || ack->seq() != last_applied + 1) break;
      last_applied = ack->seq();
      if (last_applied == 20) some_acked.Notify();
    }
  });
  const bool acked = some_acked.WaitForNotificationWithTimeout(absl::Seconds(30));
  StopWithWatchdog();
  writer.join();
  reader.join();
  ASSERT_TRUE(acked) << "fewer than 20 acks before the stop";
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  stream.reset();

  const absl::Status restarted = shard_->Start();
  ASSERT_TRUE(restarted.ok()) << restarted;
  IngestStream again(&shard_->ingest());
  for (uint64_t seq = 1; seq <= kBatches; ++seq) {
    const v1::IngestAck ack = again.SendAndRead(batch(seq));
    if (seq <= last_applied) {
      ASSERT_EQ(ack.outcome(), v1::IngestAck::DUPLICATE) << RenderAck(ack);
    } else {
      // Batches after the last ack seen may have been applied before the stop, or not.
      ASSERT_THAT(ack.outcome(), ::testing::AnyOf(v1::IngestAck::DUPLICATE, v1::IngestAck::APPLIED))
          << RenderAck(ack);
    }
  }
  EXPECT_TRUE(again.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(absl::StrCat(" requests=", kBatches, " ")));
}

// A batch that arrives just as the shard starts draining is either applied and acked, or not
// applied at all; it never crashes the shard. Ten stop/start rounds make the race likely.
TEST_F(AggregatorIntegrationTest, ShutdownRacingANewBatchAppliesItOnceOrNotAtAll) {
  constexpr uint64_t kRounds = 10;
  auto batch = [&](uint64_t seq) {
    return MakeBatch(kProducer, 1, seq, {Event(absl::StrCat("r", seq))});
  };
  uint64_t next_seq = 1;
  for (uint64_t round = 0; round < kRounds; ++round) {
    if (round > 0) {
      const absl::Status restarted = shard_->Start();
      ASSERT_TRUE(restarted.ok()) << restarted;
    }
    IngestStream stream(&shard_->ingest());
    const v1::IngestAck first = stream.SendAndRead(batch(next_seq));
    ASSERT_EQ(first.outcome(), v1::IngestAck::APPLIED) << RenderAck(first);
    ASSERT_TRUE(stream.Send(batch(next_seq + 1)));
    StopWithWatchdog();
    const std::optional<v1::IngestAck> late = stream.Read();
    next_seq =
        late.has_value() && late->outcome() == v1::IngestAck::APPLIED ? next_seq + 2 : next_seq + 1;
    EXPECT_EQ(stream.Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  ASSERT_TRUE(shard_->Start().ok());
  // Every batch not acked before a stop is resent now, after the last acked one.
  IngestStream stream(&shard_->ingest());
  const v1::IngestAck resent = stream.SendAndRead(batch(next_seq));
  EXPECT_EQ(resent.outcome(), v1::IngestAck::APPLIED) << RenderAck(resent);
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_THAT(DayTotals(), HasSubstr(absl::StrCat(" requests=", next_seq, " ")));
}

}  // namespace
}  // namespace tokenmeter::integration
