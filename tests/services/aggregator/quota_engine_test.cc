// QuotaEngine against a real RocksDB store in a temp dir and a FakeClock: hierarchical
// all-or-nothing reservations, commit / release / expiry, idempotency, windows, prices,
// ownership, recovery and input bounds.
#include "services/aggregator/quota_engine.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/pricing.h"
#include "services/common/clock.h"
#include "services/common/sharding.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {
namespace {

using ::testing::HasSubstr;

// 2025-01-15 12:00:03 UTC: mid-day (no calendar boundary near), not aligned to a 10 s bucket.
absl::Time StartTime() {
  return absl::FromCivil(absl::CivilSecond(2025, 1, 15, 12, 0, 3), absl::UTCTimeZone());
}

TokenCounts Tokens(uint64_t input, uint64_t output = 0) {
  TokenCounts t;
  t.input = input;
  t.output = output;
  return t;
}

RequestScope UserScope(const std::string& tenant, const std::string& team,
                       const std::string& user) {
  return RequestScope{tenant, team, user, "", "openai", "gpt-4o"};
}

// A selector over tenant / team / user ("" = not part of the scope, "*" = each value).
Selector Select(std::string tenant, std::string team = "", std::string user = "") {
  Selector s;
  s.tenant = std::move(tenant);
  s.team = std::move(team);
  s.user = std::move(user);
  return s;
}

Policy MakePolicy(std::string id, Selector selector, Metric metric, WindowKind window,
                  uint64_t amount) {
  Policy p;
  p.id = std::move(id);
  p.selector = std::move(selector);
  p.limits.push_back(Limit{metric, window, amount});
  p.source = "file:test";
  return p;
}

// tenant 1000 / team 500 / user 300 total tokens per day.
std::vector<Policy> HierarchyPolicies(const std::string& tenant = "acme") {
  return {
      MakePolicy("tenant-day", Select(tenant), Metric::kTotalTokens, WindowKind::kDay, 1000),
      MakePolicy("team-day", Select(tenant, "*"), Metric::kTotalTokens, WindowKind::kDay, 500),
      MakePolicy("user-day", Select(tenant, "*", "*"), Metric::kTotalTokens, WindowKind::kDay, 300),
  };
}

// One line per limit, in decision order: "<policy> used=U held=O req=R[ EXCEEDED]".
std::string Render(const Decision& d) {
  return absl::StrJoin(d.limits, "\n", [](std::string* out, const LimitState& l) {
    absl::StrAppend(out, l.policy_id, " used=", l.used, " held=", l.outstanding,
                    " req=", l.requested, l.exceeded ? " EXCEEDED" : "");
  });
}

const LimitState* FindLimit(const Decision& d, const std::string& policy_id) {
  for (const LimitState& l : d.limits) {
    if (l.policy_id == policy_id) return &l;
  }
  return nullptr;
}

// A tenant name that shard `not_owner` of `count` does not own.
std::string ForeignTenant(int32_t count, int32_t not_owner) {
  for (int i = 0; i < 1000; ++i) {
    std::string t = absl::StrCat("tenant-", i);
    if (common::OwnerShard(t, count) != not_owner) return t;
  }
  return "";
}

class QuotaEngineTest : public ::testing::Test {
 protected:
  QuotaEngineTest() : clock_(StartTime()) {}

  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "quota_engine_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    Open(ShardIdentity{0, 1});
    SetPolicies(HierarchyPolicies());
  }

  void TearDown() override {
    Close();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void Open(ShardIdentity shard) {
    storage::StoreOptions options;
    options.path = dir_;
    options.now = [this] { return clock_.Now(); };
    auto store = storage::OpenRocksStore(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    registry_ = std::make_unique<PolicyRegistry>(store_.get());
    ASSERT_TRUE(registry_->Load().ok());
    registry_->SetFileConfig(config_);
    engine_ = std::make_unique<QuotaEngine>(store_.get(), registry_.get(), shard, &clock_,
                                            QuotaOptions{});
  }

  void Close() {
    engine_.reset();
    registry_.reset();
    store_.reset();
  }

  void SetPolicies(std::vector<Policy> policies, std::optional<PriceTable> prices = std::nullopt) {
    for (const Policy& p : policies) ASSERT_TRUE(ValidatePolicy(p).ok()) << ValidatePolicy(p);
    config_ = ConfigFile{std::move(policies), std::move(prices)};
    registry_->SetFileConfig(config_);
  }

  // What a zero-token Check reports: used and outstanding per limit.
  std::string Held(const RequestScope& scope) {
    auto d = engine_->Check(scope, Tokens(0));
    if (!d.ok()) return d.status().ToString();
    return Render(*d);
  }

  common::FakeClock clock_;
  std::string dir_;
  ConfigFile config_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<PolicyRegistry> registry_;
  std::unique_ptr<QuotaEngine> engine_;
  const RequestScope alice_ = UserScope("acme", "research", "alice");
  const RequestScope bob_ = UserScope("acme", "research", "bob");
};

TEST_F(QuotaEngineTest, ReserveIsAllOrNothingAcrossTheHierarchy) {
  auto denied = engine_->Reserve("r-big", alice_, Tokens(400), absl::Seconds(30));
  ASSERT_TRUE(denied.ok()) << denied.status();
  EXPECT_FALSE(denied->allowed);
  EXPECT_EQ(Render(*denied),
            "user-day used=0 held=0 req=400 EXCEEDED\n"
            "tenant-day used=0 held=0 req=400\n"
            "team-day used=0 held=0 req=400");
  // A day limit fits again at the next UTC midnight.
  EXPECT_EQ(denied->retry_after, absl::Hours(12) - absl::Seconds(3));
  // Nothing is held anywhere after the denial.
  EXPECT_EQ(Held(alice_),
            "tenant-day used=0 held=0 req=0\nteam-day used=0 held=0 req=0\n"
            "user-day used=0 held=0 req=0");
  EXPECT_EQ(engine_->open_reservations(), 0u);

  auto allowed = engine_->Reserve("r-small", alice_, Tokens(150, 50), absl::Seconds(30));
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_TRUE(allowed->allowed);
  EXPECT_EQ(allowed->expires_at, clock_.Now() + absl::Seconds(30));
  EXPECT_EQ(Held(alice_),
            "tenant-day used=0 held=200 req=0\nteam-day used=0 held=200 req=0\n"
            "user-day used=0 held=200 req=0");
  // Bob shares alice's tenant and team, not her user limit.
  EXPECT_EQ(Held(bob_),
            "tenant-day used=0 held=200 req=0\nteam-day used=0 held=200 req=0\n"
            "user-day used=0 held=0 req=0");
  EXPECT_EQ(engine_->open_reservations(), 1u);
}

TEST_F(QuotaEngineTest, ReservationsTogetherCannotPassAnUpperLevel) {
  // Two users of one team: 250 + 250 fit the team (500); a third 100 for a third user fits
  // that user's 300 but not the team's remaining 0.
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(250), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Reserve("r2", bob_, Tokens(250), absl::Seconds(30))->allowed);
  auto d = engine_->Reserve("r3", UserScope("acme", "research", "carol"), Tokens(100),
                            absl::Seconds(30));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->allowed);
  EXPECT_EQ(Render(*d),
            "team-day used=0 held=500 req=100 EXCEEDED\n"
            "tenant-day used=0 held=500 req=100\n"
            "user-day used=0 held=0 req=100");
}

TEST_F(QuotaEngineTest, CommitRecordsActualAboveEstimateAndIsIdempotent) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  auto first = engine_->Commit("acme", "r1", Tokens(200, 50));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->reservation_was_open);
  EXPECT_FALSE(first->duplicate);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=250 held=0 req=0\nteam-day used=250 held=0 req=0\n"
            "user-day used=250 held=0 req=0");

  auto second = engine_->Commit("acme", "r1", Tokens(200, 50));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->reservation_was_open);
  EXPECT_TRUE(second->duplicate);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "user-day")->used, 250u);
  EXPECT_EQ(engine_->open_reservations(), 0u);
}

TEST_F(QuotaEngineTest, ReleaseReturnsTheHoldOnce) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  auto released = engine_->Release("acme", "r1");
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_TRUE(*released);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=0 held=0 req=0\nteam-day used=0 held=0 req=0\n"
            "user-day used=0 held=0 req=0");
  auto again = engine_->Release("acme", "r1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  EXPECT_EQ(engine_->open_reservations(), 0u);
}

TEST_F(QuotaEngineTest, CommitAfterReleaseStillRecordsTheUsageOnce) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  ASSERT_TRUE(*engine_->Release("acme", "r1"));
  auto late = engine_->Commit("acme", "r1", Tokens(80));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_FALSE(late->reservation_was_open);
  EXPECT_FALSE(late->duplicate);
  auto again = engine_->Commit("acme", "r1", Tokens(80));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=80 held=0 req=0\nteam-day used=80 held=0 req=0\n"
            "user-day used=80 held=0 req=0");
}

TEST_F(QuotaEngineTest, UnknownReservationIsNotFound) {
  auto commit = engine_->Commit("acme", "never-reserved", Tokens(10));
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kNotFound) << commit.status();
  EXPECT_THAT(std::string(commit.status().message()), HasSubstr("never-reserved"));
  auto release = engine_->Release("acme", "never-reserved");
  EXPECT_EQ(release.status().code(), absl::StatusCode::kNotFound) << release.status();
  // Nothing was recorded by the refused commit.
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "tenant-day")->used, 0u);
}

TEST_F(QuotaEngineTest, ExpiryReleasesTheHoldAfterTheTtl) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(5))->allowed);
  clock_.Advance(absl::Seconds(4));
  ASSERT_EQ(*engine_->ExpireDue(), 0);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "user-day")->outstanding, 100u);

  clock_.Advance(absl::Seconds(2));
  auto expired = engine_->ExpireDue();
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_EQ(*expired, 1);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=0 held=0 req=0\nteam-day used=0 held=0 req=0\n"
            "user-day used=0 held=0 req=0");
  EXPECT_EQ(engine_->open_reservations(), 0u);
  EXPECT_EQ(*engine_->ExpireDue(), 0);
  // An expired reservation is closed: Release finds it, but it was no longer open.
  EXPECT_FALSE(*engine_->Release("acme", "r1"));
}

TEST_F(QuotaEngineTest, ExpiryCommitsTheEstimateWhenThePolicySaysSo) {
  std::vector<Policy> policies = HierarchyPolicies();
  policies[2].on_expiry = ExpiryAction::kCommitEstimate;
  SetPolicies(policies);
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(60, 40), absl::Seconds(5))->allowed);
  clock_.Advance(absl::Seconds(6));
  ASSERT_EQ(*engine_->ExpireDue(), 1);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=100 held=0 req=0\nteam-day used=100 held=0 req=0\n"
            "user-day used=100 held=0 req=0");
  // The estimate was committed: a late Commit is a duplicate and records nothing more.
  auto late = engine_->Commit("acme", "r1", Tokens(500));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_TRUE(late->duplicate);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "tenant-day")->used, 100u);
}

TEST_F(QuotaEngineTest, RepeatedReserveReturnsTheSameDecisionAndHoldsOnce) {
  auto first = engine_->Reserve("r1", alice_, Tokens(200), absl::Seconds(30));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->allowed);
  clock_.Advance(absl::Seconds(1));
  // The repeat would not fit if it were held again (200 + 200 > 300).
  auto repeat = engine_->Reserve("r1", alice_, Tokens(200), absl::Seconds(30));
  ASSERT_TRUE(repeat.ok()) << repeat.status();
  EXPECT_TRUE(repeat->allowed);
  EXPECT_EQ(repeat->expires_at, first->expires_at);
  EXPECT_EQ(Render(*repeat), Render(*first));
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "user-day")->outstanding, 200u);
  EXPECT_EQ(engine_->open_reservations(), 1u);

  // After the commit, a repeat still answers the original decision and holds nothing.
  ASSERT_TRUE(engine_->Commit("acme", "r1", Tokens(200)).ok());
  auto after_close = engine_->Reserve("r1", alice_, Tokens(200), absl::Seconds(30));
  ASSERT_TRUE(after_close.ok()) << after_close.status();
  EXPECT_TRUE(after_close->allowed);
  EXPECT_EQ(after_close->expires_at, first->expires_at);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=200 held=0 req=0\nteam-day used=200 held=0 req=0\n"
            "user-day used=200 held=0 req=0");
}

TEST_F(QuotaEngineTest, DeniedRequestsCountNothing) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Commit("acme", "r1", Tokens(100)).ok());
  const std::string before = Held(alice_);
  auto denied = engine_->Reserve("r2", alice_, Tokens(250), absl::Seconds(30));
  ASSERT_TRUE(denied.ok()) << denied.status();
  EXPECT_FALSE(denied->allowed);
  EXPECT_EQ(Held(alice_), before);
  EXPECT_EQ(engine_->counters().denied.load(), 1u);
  EXPECT_EQ(engine_->counters().allowed.load(), 1u);
  // A denied reservation is not remembered: its id can be committed by nobody.
  EXPECT_EQ(engine_->Commit("acme", "r2", Tokens(250)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Held(alice_), before);
}

TEST_F(QuotaEngineTest, ChangedLimitAppliesAtOnce) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Commit("acme", "r1", Tokens(100)).ok());
  EXPECT_TRUE(engine_->Check(alice_, Tokens(150))->allowed);

  std::vector<Policy> lowered = HierarchyPolicies();
  lowered[2].limits[0].amount = 200;
  SetPolicies(lowered);
  auto d = engine_->Check(alice_, Tokens(150));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->allowed);
  const LimitState* user = FindLimit(*d, "user-day");
  ASSERT_NE(user, nullptr);
  EXPECT_EQ(user->limit, 200u);
  EXPECT_EQ(user->used, 100u);
  EXPECT_EQ(user->remaining, 100u);
  EXPECT_TRUE(user->exceeded);
}

TEST_F(QuotaEngineTest, ShadowPolicyAllowsButFlags) {
  std::vector<Policy> policies = HierarchyPolicies();
  Policy shadow = MakePolicy("shadow-user", Select("acme", "*", "*"), Metric::kTotalTokens,
                             WindowKind::kDay, 50);
  shadow.mode = Mode::kShadow;
  policies.push_back(shadow);
  SetPolicies(policies);
  auto d = engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->allowed);
  EXPECT_TRUE(d->shadow_denied);
  ASSERT_FALSE(d->limits.empty());
  EXPECT_EQ(d->limits[0].policy_id, "shadow-user");
  EXPECT_TRUE(d->limits[0].exceeded);
  EXPECT_EQ(d->limits[0].mode, Mode::kShadow);
  EXPECT_EQ(engine_->counters().shadow_denied.load(), 1u);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "user-day")->outstanding, 100u);
}

TEST_F(QuotaEngineTest, SlidingMinuteLimitDeniesUntilUsageLeavesTheWindow) {
  SetPolicies({MakePolicy("user-minute", Select("acme", "*", "*"), Metric::kTotalTokens,
                          WindowKind::kMinute, 100)});
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(100), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Commit("acme", "r1", Tokens(100)).ok());

  auto d = engine_->Check(alice_, Tokens(1));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->allowed);
  EXPECT_EQ(d->limits[0].used, 100u);
  EXPECT_GT(d->retry_after, absl::ZeroDuration());
  EXPECT_LE(d->retry_after, absl::Seconds(70));
  const absl::Duration retry_after = d->retry_after;

  // Past the fixed minute boundary (12:01:00) the usage is still inside the sliding minute.
  clock_.Advance(absl::Seconds(60));
  EXPECT_FALSE(engine_->Check(alice_, Tokens(1))->allowed);
  // The retry-after hint is honest: at that time the request fits.
  clock_.Set(StartTime() + retry_after);
  EXPECT_TRUE(engine_->Check(alice_, Tokens(1))->allowed);
  clock_.Set(StartTime() + absl::Seconds(70));
  auto later = engine_->Check(alice_, Tokens(1));
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_TRUE(later->allowed);
  EXPECT_EQ(later->limits[0].used, 0u);
}

TEST_F(QuotaEngineTest, CostLimitWithoutPriceIsFailedPrecondition) {
  SetPolicies({MakePolicy("tenant-cost", Select("acme"), Metric::kCostMicroUsd, WindowKind::kMonth,
                          1'000'000)});
  RequestScope unpriced = alice_;
  unpriced.model = "mystery-model";
  auto check = engine_->Check(unpriced, Tokens(10));
  EXPECT_EQ(check.status().code(), absl::StatusCode::kFailedPrecondition) << check.status();
  EXPECT_THAT(std::string(check.status().message()), HasSubstr("mystery-model"));
  auto reserve = engine_->Reserve("r1", unpriced, Tokens(10), absl::Seconds(30));
  EXPECT_EQ(reserve.status().code(), absl::StatusCode::kFailedPrecondition) << reserve.status();
  EXPECT_EQ(engine_->open_reservations(), 0u);
}

TEST_F(QuotaEngineTest, CostLimitCountsMicroUsd) {
  // $2.50 per Mtok input, $1.25 cached, $10 output.
  auto prices = PriceTable::Create(1, {{"openai", "gpt-4o", 2'500'000, 1'250'000, 10'000'000}});
  ASSERT_TRUE(prices.ok()) << prices.status();
  SetPolicies({MakePolicy("tenant-cost", Select("acme"), Metric::kCostMicroUsd, WindowKind::kMonth,
                          10'000)},
              *prices);
  // 1000 input + 500 output = 2500 + 5000 micro-USD.
  auto d = engine_->Reserve("r1", alice_, Tokens(1000, 500), absl::Seconds(30));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->allowed);
  EXPECT_EQ(d->limits[0].requested, 7500u);
  TokenCounts actual = Tokens(1000, 500);
  actual.cached_input = 400;  // 600 * 2.5 + 400 * 1.25 + 500 * 10 = 1500 + 500 + 5000.
  ASSERT_TRUE(engine_->Commit("acme", "r1", actual).ok());
  auto after = engine_->Check(alice_, Tokens(1000, 500));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->limits[0].used, 7000u);
  EXPECT_EQ(after->limits[0].outstanding, 0u);
  EXPECT_FALSE(after->allowed);  // 7000 + 7500 > 10000.
}

TEST_F(QuotaEngineTest, TenantOfAnotherShardIsRefusedNamingTheOwner) {
  Close();
  Open(ShardIdentity{0, 3});
  const std::string tenant = ForeignTenant(3, 0);
  ASSERT_FALSE(tenant.empty());
  const int32_t owner = common::OwnerShard(tenant, 3);
  SetPolicies(HierarchyPolicies(tenant));
  const RequestScope scope = UserScope(tenant, "research", "alice");
  const std::string expected = absl::StrCat("owned by shard ", owner, " of 3");

  auto check = engine_->Check(scope, Tokens(1));
  EXPECT_EQ(check.status().code(), absl::StatusCode::kFailedPrecondition) << check.status();
  EXPECT_THAT(std::string(check.status().message()), HasSubstr(expected));
  auto reserve = engine_->Reserve("r1", scope, Tokens(1), absl::Seconds(30));
  EXPECT_EQ(reserve.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reserve.status().message()), HasSubstr(expected));
  EXPECT_EQ(engine_->Commit(tenant, "r1", Tokens(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->Release(tenant, "r1").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->open_reservations(), 0u);
}

TEST_F(QuotaEngineTest, RecoverRestoresOpenReservationsAfterReopen) {
  ASSERT_TRUE(engine_->Reserve("r-open", alice_, Tokens(120), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Reserve("r-closed", alice_, Tokens(50), absl::Seconds(30))->allowed);
  ASSERT_TRUE(engine_->Release("acme", "r-closed").ok());
  Close();
  Open(ShardIdentity{0, 1});
  ASSERT_TRUE(engine_->Recover().ok());
  EXPECT_EQ(engine_->open_reservations(), 1u);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=0 held=120 req=0\nteam-day used=0 held=120 req=0\n"
            "user-day used=0 held=120 req=0");
  // The recovered hold still denies what would not fit and can be committed.
  EXPECT_FALSE(engine_->Check(alice_, Tokens(200))->allowed);
  auto commit = engine_->Commit("acme", "r-open", Tokens(130));
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_TRUE(commit->reservation_was_open);
  EXPECT_EQ(Held(alice_),
            "tenant-day used=130 held=0 req=0\nteam-day used=130 held=0 req=0\n"
            "user-day used=130 held=0 req=0");
}

TEST_F(QuotaEngineTest, RecoveredReservationsStillExpire) {
  ASSERT_TRUE(engine_->Reserve("r1", alice_, Tokens(120), absl::Seconds(5))->allowed);
  Close();
  Open(ShardIdentity{0, 1});
  ASSERT_TRUE(engine_->Recover().ok());
  clock_.Advance(absl::Seconds(6));
  EXPECT_EQ(*engine_->ExpireDue(), 1);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "tenant-day")->outstanding, 0u);
}

TEST_F(QuotaEngineTest, RejectsBadInputNamingTheField) {
  auto huge = engine_->Reserve("r1", alice_, Tokens(1'000'000'001), absl::Seconds(30));
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument) << huge.status();
  EXPECT_THAT(std::string(huge.status().message()), HasSubstr("estimate.input"));

  auto huge_check = engine_->Check(alice_, Tokens(0, 1'000'000'001));
  EXPECT_EQ(huge_check.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(huge_check.status().message()), HasSubstr("usage.output"));

  ASSERT_TRUE(engine_->Reserve("r-ok", alice_, Tokens(1), absl::Seconds(30))->allowed);
  auto huge_commit = engine_->Commit("acme", "r-ok", Tokens(1'000'000'001));
  EXPECT_EQ(huge_commit.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(huge_commit.status().message()), HasSubstr("actual.input"));

  auto long_ttl = engine_->Reserve("r2", alice_, Tokens(1), absl::Hours(1) + absl::Seconds(1));
  EXPECT_EQ(long_ttl.status().code(), absl::StatusCode::kInvalidArgument) << long_ttl.status();
  EXPECT_THAT(std::string(long_ttl.status().message()), HasSubstr("ttl"));

  auto no_id = engine_->Reserve("", alice_, Tokens(1), absl::Seconds(30));
  EXPECT_EQ(no_id.status().code(), absl::StatusCode::kInvalidArgument) << no_id.status();
  EXPECT_THAT(std::string(no_id.status().message()), HasSubstr("reservation_id"));

  RequestScope bad_team = alice_;
  bad_team.team = "re search";
  auto bad_scope = engine_->Check(bad_team, Tokens(1));
  EXPECT_EQ(bad_scope.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_scope.status().message()), HasSubstr("scope.team"));

  // Only the valid reservation holds anything.
  EXPECT_EQ(engine_->open_reservations(), 1u);
  EXPECT_EQ(FindLimit(*engine_->Check(alice_, Tokens(0)), "tenant-day")->outstanding, 1u);
}

}  // namespace
}  // namespace tokenmeter::aggregator
