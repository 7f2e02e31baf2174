// IngestEngine against a real RocksDB store in a temp dir and a FakeClock: batch outcomes
// (applied, duplicate, gap, fenced, not owner, invalid), event-id dedup, dead letters and
// state that survives a restart.
#include "services/aggregator/ingest_engine.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/rollup.h"
#include "services/aggregator/usage_reader.h"
#include "services/aggregator/windows.h"
#include "services/common/clock.h"
#include "services/common/sharding.h"
#include "storage/key_codec.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

// Lets gtest print outcomes by name (found by ADL, so it lives in the type's namespace).
void PrintTo(IngestOutcome outcome, std::ostream* os) { *os << IngestOutcomeName(outcome); }

namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

absl::Time StartTime() {
  return absl::FromCivil(absl::CivilSecond(2025, 1, 15, 12, 0, 3), absl::UTCTimeZone());
}

// "<outcome> applied=A dup=D rej=R expected=E".
std::string Render(const IngestResult& r) {
  return absl::StrCat(IngestOutcomeName(r.outcome), " applied=", r.applied_events,
                      " dup=", r.duplicate_events, " rej=", r.rejected_events,
                      " expected=", r.expected_seq);
}

// A tenant that shard `index` of `count` owns (want_owned) or does not own.
std::string TenantFor(int32_t count, int32_t index, bool want_owned) {
  for (int i = 0; i < 1000; ++i) {
    std::string t = absl::StrCat("tenant-", i);
    if ((common::OwnerShard(t, count) == index) == want_owned) return t;
  }
  return "";
}

storage::ScopeKey Scope(std::string tenant, std::string team = "", std::string user = "",
                        std::string model = "") {
  return storage::ScopeKey{std::move(tenant), std::move(team), std::move(user), "",
                           std::move(model)};
}

class IngestEngineTest : public ::testing::Test {
 protected:
  IngestEngineTest() : clock_(StartTime()) {}

  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ingest_engine_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    Open(ShardIdentity{0, 1}, IngestOptions{});
  }

  void TearDown() override {
    Close();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void Open(ShardIdentity shard, IngestOptions options) {
    storage::StoreOptions store_options;
    store_options.path = dir_;
    store_options.now = [this] { return clock_.Now(); };
    auto store = storage::OpenRocksStore(store_options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    registry_ = std::make_unique<PolicyRegistry>(store_.get());
    ASSERT_TRUE(registry_->Load().ok());
    engine_ = std::make_unique<IngestEngine>(store_.get(), registry_.get(), shard, &clock_,
                                             std::move(options));
  }

  void Close() {
    engine_.reset();  // Drains and joins the apply thread.
    registry_.reset();
    store_.reset();
  }

  // Submits and waits (bounded) for the callback.
  IngestResult SubmitAndWait(IngestBatchInput batch) {
    struct Slot {
      absl::Notification done;
      IngestResult result;
    };
    auto slot = std::make_shared<Slot>();
    engine_->Submit(std::move(batch), [slot](IngestResult r) {
      slot->result = std::move(r);
      slot->done.Notify();
    });
    if (!slot->done.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      ADD_FAILURE() << "no ingest callback within 30 s";
      return IngestResult{};
    }
    return slot->result;
  }

  Event MakeEvent(const std::string& id, uint64_t input, uint64_t output,
                  const std::string& tenant = "acme", const std::string& user = "alice") {
    Event e;
    e.event_id = id;
    e.scope = RequestScope{tenant, "research", user, "", "openai", "gpt-4o"};
    e.application = "chat";
    e.tokens.input = input;
    e.tokens.output = output;
    e.occurred_at = clock_.Now() - absl::Seconds(30);
    return e;
  }

  static IngestBatchInput Batch(uint64_t epoch, uint64_t seq, std::vector<Event> events,
                                const std::string& producer = "sidecar-1") {
    IngestBatchInput batch;
    batch.producer_id = producer;
    batch.epoch = epoch;
    batch.seq = seq;
    batch.events = std::move(events);
    return batch;
  }

  // The tenant-level (or user-level) UTC day counter of today.
  storage::CounterRecord DayCounter(const storage::ScopeKey& scope) {
    const absl::Time day = CalendarWindowStart(WindowKind::kDay, clock_.Now(), absl::UTCTimeZone());
    auto r = store_->GetCounter(
        storage::CounterKey(scope, storage::Granularity::kDay, absl::ToUnixSeconds(day)));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : storage::CounterRecord{};
  }
  uint64_t TenantTotal(const std::string& tenant = "acme") {
    return MetricValue(DayCounter(Scope(tenant)), Metric::kTotalTokens);
  }
  uint64_t TenantRequests(const std::string& tenant = "acme") {
    return MetricValue(DayCounter(Scope(tenant)), Metric::kRequests);
  }

  common::FakeClock clock_;
  std::string dir_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<PolicyRegistry> registry_;
  std::unique_ptr<IngestEngine> engine_;
};

TEST_F(IngestEngineTest, AppliesABatchAndCountsTotals) {
  IngestResult r = SubmitAndWait(Batch(1, 1,
                                       {MakeEvent("e1", 100, 10), MakeEvent("e2", 200, 20),
                                        MakeEvent("e3", 300, 30, "acme", "bob")}));
  EXPECT_EQ(Render(r), "applied applied=3 dup=0 rej=0 expected=2");
  EXPECT_EQ(r.seq, 1u);
  EXPECT_EQ(TenantTotal(), 660u);
  EXPECT_EQ(TenantRequests(), 3u);
  EXPECT_EQ(MetricValue(DayCounter(Scope("acme", "research", "alice")), Metric::kTotalTokens),
            330u);
  EXPECT_EQ(MetricValue(DayCounter(Scope("acme", "research", "bob")), Metric::kTotalTokens), 330u);
  EXPECT_EQ(MetricValue(DayCounter(Scope("acme", "", "", "gpt-4o")), Metric::kInputTokens), 600u);

  // The same totals through the read side.
  UsageReader reader(store_.get(), registry_.get(), ShardIdentity{0, 1});
  auto points =
      reader.GetUsage(Scope("acme"), storage::Granularity::kHour, clock_.Now() - absl::Hours(2),
                      clock_.Now() + absl::Hours(1), "UTC");
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 1u);
  EXPECT_EQ(MetricValue((*points)[0].totals, Metric::kTotalTokens), 660u);
  EXPECT_EQ(engine_->counters().applied_events.load(), 3u);
}

TEST_F(IngestEngineTest, SameSeqAgainIsDuplicateAndChangesNothing) {
  ASSERT_EQ(SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  // Same seq, different content: still a duplicate; the content is not looked at.
  IngestResult r = SubmitAndWait(Batch(1, 1, {MakeEvent("e-other", 999, 999)}));
  EXPECT_EQ(Render(r), "duplicate applied=0 dup=0 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(), 110u);
  EXPECT_EQ(TenantRequests(), 1u);
  EXPECT_EQ(engine_->counters().duplicate_batches.load(), 1u);
}

TEST_F(IngestEngineTest, SeqGapIsRefusedWithTheExpectedSeq) {
  ASSERT_EQ(SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  IngestResult gap = SubmitAndWait(Batch(1, 3, {MakeEvent("e3", 5, 5)}));
  EXPECT_EQ(Render(gap), "gap applied=0 dup=0 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(), 110u);
  // The missing batch, then the one after it, apply in order.
  EXPECT_EQ(SubmitAndWait(Batch(1, 2, {MakeEvent("e2", 1, 1)})).outcome, IngestOutcome::kApplied);
  EXPECT_EQ(SubmitAndWait(Batch(1, 3, {MakeEvent("e3", 5, 5)})).outcome, IngestOutcome::kApplied);
  EXPECT_EQ(TenantTotal(), 122u);
}

TEST_F(IngestEngineTest, FirstBatchOfAProducerMustBeSeqOne) {
  IngestResult r = SubmitAndWait(Batch(1, 2, {MakeEvent("e1", 100, 10)}));
  EXPECT_EQ(Render(r), "gap applied=0 dup=0 rej=0 expected=1");
  EXPECT_EQ(TenantTotal(), 0u);
}

TEST_F(IngestEngineTest, LowerEpochAfterAHigherOneIsFenced) {
  ASSERT_EQ(SubmitAndWait(Batch(2, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  IngestResult fenced = SubmitAndWait(Batch(1, 2, {MakeEvent("e2", 50, 5)}));
  EXPECT_EQ(fenced.outcome, IngestOutcome::kFenced);
  EXPECT_THAT(fenced.detail, HasSubstr("epoch 1"));
  EXPECT_EQ(TenantTotal(), 110u);
  // The fenced batch did not advance the watermark: the current epoch's seq 2 applies.
  EXPECT_EQ(Render(SubmitAndWait(Batch(2, 2, {MakeEvent("e2", 50, 5)}))),
            "applied applied=1 dup=0 rej=0 expected=3");
  // A newer epoch continues the same sequence.
  EXPECT_EQ(SubmitAndWait(Batch(3, 3, {MakeEvent("e3", 1, 0)})).outcome, IngestOutcome::kApplied);
  EXPECT_EQ(SubmitAndWait(Batch(2, 4, {MakeEvent("e4", 1, 0)})).outcome, IngestOutcome::kFenced);
  EXPECT_EQ(TenantTotal(), 166u);
}

// The ingest contract (ingest.proto, IngestBatch.epoch): a batch whose epoch is lower than the
// highest the shard has SEEN for the producer is refused. A restarted producer's first batches
// are usually resends of already-applied ones (DUPLICATE); its epoch must fence the old
// incarnation all the same.
TEST_F(IngestEngineTest, HigherEpochSeenOnADuplicateFencesOlderEpochs) {
  ASSERT_EQ(SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  ASSERT_EQ(SubmitAndWait(Batch(2, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kDuplicate);
  IngestResult zombie = SubmitAndWait(Batch(1, 2, {MakeEvent("zombie", 5, 5)}));
  EXPECT_EQ(zombie.outcome, IngestOutcome::kFenced);
  EXPECT_EQ(TenantTotal(), 110u);
}

TEST_F(IngestEngineTest, RetriedEventIdInANewBatchCountsOnce) {
  ASSERT_EQ(SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  IngestResult r = SubmitAndWait(Batch(1, 2, {MakeEvent("e1", 100, 10), MakeEvent("e2", 7, 3)}));
  EXPECT_EQ(Render(r), "applied applied=1 dup=1 rej=0 expected=3");
  EXPECT_EQ(TenantTotal(), 120u);
  EXPECT_EQ(TenantRequests(), 2u);
  // The same event id under another producer is the same event too.
  IngestResult other = SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10)}, "sidecar-2"));
  EXPECT_EQ(Render(other), "applied applied=0 dup=1 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(), 120u);
}

TEST_F(IngestEngineTest, RepeatedEventIdWithinOneBatchCountsOnce) {
  IngestResult r = SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10), MakeEvent("e1", 100, 10)}));
  EXPECT_EQ(Render(r), "applied applied=1 dup=1 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(), 110u);
}

TEST_F(IngestEngineTest, MalformedEventsAreDeadLetteredAndTheRestApplies) {
  Event bad_tenant = MakeEvent("bad-tenant", 1, 1, "acme corp");
  Event bad_subset = MakeEvent("bad-subset", 10, 1);
  bad_subset.tokens.cached_input = 11;
  Event too_old = MakeEvent("too-old", 1, 1);
  too_old.occurred_at = clock_.Now() - absl::Hours(24 * 36);
  IngestResult r = SubmitAndWait(Batch(
      1, 1,
      {MakeEvent("good-1", 100, 10), bad_tenant, bad_subset, too_old, MakeEvent("good-2", 1, 1)}));
  EXPECT_EQ(Render(r), "applied applied=2 dup=0 rej=3 expected=2");
  EXPECT_EQ(TenantTotal(), 112u);

  UsageReader reader(store_.get(), registry_.get(), ShardIdentity{0, 1});
  auto letters = reader.ListDeadLetters("", 10);
  ASSERT_TRUE(letters.ok()) << letters.status();
  std::vector<std::string> rendered;
  for (const v1::DeadLetter& l : *letters) {
    rendered.push_back(absl::StrCat(l.event().event_id(), ":", l.reason(), ":", l.producer_id()));
  }
  EXPECT_THAT(rendered, UnorderedElementsAre("bad-tenant:invalid_tenant:sidecar-1",
                                             "bad-subset:token_subset:sidecar-1",
                                             "too-old:too_old:sidecar-1"));
  for (const v1::DeadLetter& l : *letters) EXPECT_FALSE(l.detail().empty()) << l.reason();
  // Filtered by tenant: the two letters of acme.
  auto acme = reader.ListDeadLetters("acme", 10);
  ASSERT_TRUE(acme.ok()) << acme.status();
  EXPECT_EQ(acme->size(), 2u);
  EXPECT_EQ(engine_->counters().rejected_events.load(), 3u);
}

TEST_F(IngestEngineTest, BatchWithAForeignTenantIsRefusedWhole) {
  Close();
  Open(ShardIdentity{0, 3}, IngestOptions{});
  const std::string mine = TenantFor(3, 0, true);
  const std::string foreign = TenantFor(3, 0, false);
  ASSERT_FALSE(mine.empty());
  ASSERT_FALSE(foreign.empty());
  IngestResult r = SubmitAndWait(
      Batch(1, 1, {MakeEvent("e1", 100, 10, mine), MakeEvent("e2", 100, 10, foreign)}));
  EXPECT_EQ(r.outcome, IngestOutcome::kNotOwner);
  EXPECT_EQ(r.applied_events, 0u);
  EXPECT_THAT(r.detail,
              HasSubstr(absl::StrCat("owned by shard ", common::OwnerShard(foreign, 3), " of 3")));
  EXPECT_EQ(TenantTotal(mine), 0u);
  // Nothing applied, not even the watermark: seq 1 with only owned tenants applies.
  EXPECT_EQ(Render(SubmitAndWait(Batch(1, 1, {MakeEvent("e1", 100, 10, mine)}))),
            "applied applied=1 dup=0 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(mine), 110u);
}

TEST_F(IngestEngineTest, TooManyOrNoEventsIsInvalid) {
  Close();
  IngestOptions options;
  options.max_events_per_batch = 3;
  Open(ShardIdentity{0, 1}, options);
  std::vector<Event> four;
  for (int i = 0; i < 4; ++i) four.push_back(MakeEvent(absl::StrCat("e", i), 10, 0));
  IngestResult r = SubmitAndWait(Batch(1, 1, four));
  EXPECT_EQ(r.outcome, IngestOutcome::kInvalid);
  EXPECT_THAT(r.detail, HasSubstr("events"));
  EXPECT_EQ(SubmitAndWait(Batch(1, 1, {})).outcome, IngestOutcome::kInvalid);
  EXPECT_EQ(SubmitAndWait(Batch(1, 0, {MakeEvent("e0", 10, 0)})).outcome, IngestOutcome::kInvalid);
  EXPECT_EQ(TenantTotal(), 0u);
  // Nothing applied: seq 1 is still expected.
  four.pop_back();
  EXPECT_EQ(Render(SubmitAndWait(Batch(1, 1, four))), "applied applied=3 dup=0 rej=0 expected=2");
  EXPECT_EQ(TenantTotal(), 30u);
}

TEST_F(IngestEngineTest, StateSurvivesReopen) {
  ASSERT_EQ(SubmitAndWait(Batch(2, 1, {MakeEvent("e1", 100, 10)})).outcome,
            IngestOutcome::kApplied);
  Close();
  Open(ShardIdentity{0, 1}, IngestOptions{});
  EXPECT_EQ(Render(SubmitAndWait(Batch(2, 1, {MakeEvent("e1", 100, 10)}))),
            "duplicate applied=0 dup=0 rej=0 expected=2");
  EXPECT_EQ(SubmitAndWait(Batch(1, 2, {MakeEvent("e2", 1, 1)})).outcome, IngestOutcome::kFenced);
  // Event-id dedup keys survive too.
  EXPECT_EQ(Render(SubmitAndWait(Batch(3, 2, {MakeEvent("e1", 100, 10)}))),
            "applied applied=0 dup=1 rej=0 expected=3");
  EXPECT_EQ(TenantTotal(), 110u);
}

TEST_F(IngestEngineTest, ConcurrentSubmitsFromManyProducersAllApply) {
  constexpr int kProducers = 8;
  constexpr int kBatches = 20;
  absl::Mutex mu;
  int done = 0;
  int applied = 0;
  for (int b = 1; b <= kBatches; ++b) {
    for (int p = 0; p < kProducers; ++p) {
      engine_->Submit(Batch(1, b, {MakeEvent(absl::StrCat("p", p, "-b", b), 1, 1)},
                            absl::StrCat("producer-", p)),
                      [&](IngestResult r) {
                        absl::MutexLock lock(&mu);
                        ++done;
                        if (r.outcome == IngestOutcome::kApplied) ++applied;
                      });
    }
  }
  bool all_in_time = false;
  {
    absl::MutexLock lock(&mu);
    auto all_done = [&]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == kProducers * kBatches; };
    all_in_time = mu.AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(60));
  }
  EXPECT_EQ(TenantTotal(), 2u * kProducers * kBatches);
  Close();  // Runs any late callback while `mu` and the counts still exist.
  EXPECT_TRUE(all_in_time);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(applied, kProducers * kBatches);
}

}  // namespace
}  // namespace tokenmeter::aggregator
