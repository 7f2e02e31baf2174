// Write-time roll-up: which scopes and windows one usage lands in, that zones sharing a window
// start share the bucket, and that deltas are summed per key before they are written.
#include "services/aggregator/rollup.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/key_codec.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone tz;
  EXPECT_TRUE(absl::LoadTimeZone(name, &tz)) << name;
  return tz;
}

absl::Time Utc(int y, int mo, int d, int h, int mi, int s) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), absl::UTCTimeZone());
}

std::string ScopeLine(const storage::ScopeKey& s) {
  return absl::StrCat(s.tenant, "|", s.team, "|", s.user, "|", s.api_key, "|", s.model);
}

const char* GranularityName(storage::Granularity g) {
  switch (g) {
    case storage::Granularity::kTenSeconds:
      return "10s";
    case storage::Granularity::kHour:
      return "hour";
    case storage::Granularity::kDay:
      return "day";
    case storage::Granularity::kMonth:
      return "month";
  }
  return "?";
}

std::string Window(const char* granularity, absl::Time start) {
  return absl::StrCat(granularity, "@",
                      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", start, absl::UTCTimeZone()));
}

struct Merge {
  std::string window;  // "hour@2025-01-15T11:30:00Z"
  storage::CounterRecord delta;
};

// The merges of a WriteSet grouped by scope ("tenant|team|user|api_key|model"), windows sorted.
// Fails the test on anything that is not a well-formed counter merge.
std::map<std::string, std::vector<Merge>> MergesByScope(const storage::WriteSet& writes) {
  std::map<std::string, std::vector<Merge>> out;
  for (const storage::WriteSet::Op& op : writes.ops()) {
    EXPECT_EQ(op.kind, storage::WriteSet::Op::kMerge);
    EXPECT_EQ(op.cf, storage::Cf::kCounters);
    auto key = storage::DecodeCounterKey(op.key);
    storage::CounterRecord delta;
    if (!key.has_value() || !storage::CounterRecord::Decode(op.value, &delta)) {
      ADD_FAILURE() << "malformed counter merge";
      continue;
    }
    out[ScopeLine(key->scope)].push_back(
        {Window(GranularityName(key->granularity), absl::FromUnixSeconds(key->window_start)),
         delta});
  }
  for (auto& [scope, merges] : out) {
    std::sort(merges.begin(), merges.end(),
              [](const Merge& a, const Merge& b) { return a.window < b.window; });
  }
  return out;
}

std::vector<std::string> Windows(const std::vector<Merge>& merges) {
  std::vector<std::string> out;
  for (const Merge& m : merges) out.push_back(m.window);
  return out;
}

storage::CounterRecord Usage(uint64_t input, uint64_t output) {
  TokenCounts t;
  t.input = input;
  t.output = output;
  return UsageRecord(t, nullptr);
}

const RequestScope kAlice{"acme", "research", "alice", "", "openai", "gpt-4o"};

TEST(RollupScopesTest, SixScopesWithoutApiKey) {
  std::vector<std::string> lines;
  for (const storage::ScopeKey& s : RollupScopes(kAlice)) lines.push_back(ScopeLine(s));
  EXPECT_THAT(lines,
              ElementsAre("acme||||", "acme|research|||", "acme|research|alice||", "acme||||gpt-4o",
                          "acme|research|||gpt-4o", "acme|research|alice||gpt-4o"));
}

TEST(RollupScopesTest, EightScopesWithApiKey) {
  RequestScope scope = kAlice;
  scope.api_key = "key-1";
  std::vector<std::string> lines;
  for (const storage::ScopeKey& s : RollupScopes(scope)) lines.push_back(ScopeLine(s));
  EXPECT_THAT(lines,
              ElementsAre("acme||||", "acme|research|||", "acme|research|alice||",
                          "acme|research|alice|key-1|", "acme||||gpt-4o", "acme|research|||gpt-4o",
                          "acme|research|alice||gpt-4o", "acme|research|alice|key-1|gpt-4o"));
}

TEST(RollupScopesTest, ThreeScopesWithoutModel) {
  RequestScope scope = kAlice;
  scope.model = "";
  EXPECT_EQ(RollupScopes(scope).size(), 3u);
}

TEST(RollupAccumulatorTest, WritesEveryBucketForEveryZone) {
  const RollupPlan plan = RollupPlan::Everything({absl::UTCTimeZone(), Zone("Asia/Kolkata")});
  RollupAccumulator rollup(&plan);
  EXPECT_TRUE(rollup.empty());
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 0, 3), Usage(100, 10));
  EXPECT_FALSE(rollup.empty());
  storage::WriteSet writes;
  rollup.AppendTo(&writes);
  EXPECT_EQ(writes.size(), 6u * 7u);

  // Kolkata is UTC+05:30: its hours start at :30 UTC, its day and month at 18:30 UTC before.
  const std::vector<std::string> expected = {
      Window("10s", Utc(2025, 1, 15, 12, 0, 0)),  Window("day", Utc(2025, 1, 14, 18, 30, 0)),
      Window("day", Utc(2025, 1, 15, 0, 0, 0)),   Window("hour", Utc(2025, 1, 15, 11, 30, 0)),
      Window("hour", Utc(2025, 1, 15, 12, 0, 0)), Window("month", Utc(2024, 12, 31, 18, 30, 0)),
      Window("month", Utc(2025, 1, 1, 0, 0, 0)),
  };
  const auto merges = MergesByScope(writes);
  ASSERT_EQ(merges.size(), 6u);
  for (const auto& [scope, list] : merges) {
    EXPECT_THAT(Windows(list), ElementsAreArray(expected)) << scope;
    for (const Merge& m : list) EXPECT_EQ(m.delta, Usage(100, 10)) << scope << " " << m.window;
  }
}

TEST(RollupAccumulatorTest, ZonesWithTheSameWindowStartShareTheBucket) {
  // In winter London is on UTC: every calendar bucket coincides, so each is written once.
  const RollupPlan plan = RollupPlan::Everything({absl::UTCTimeZone(), Zone("Europe/London")});
  RollupAccumulator winter(&plan);
  winter.Add(kAlice, Utc(2025, 1, 15, 12, 0, 3), Usage(100, 10));
  storage::WriteSet winter_writes;
  winter.AppendTo(&winter_writes);
  EXPECT_EQ(winter_writes.size(), 6u * 4u);
  // Counted once, not once per zone.
  for (const auto& [scope, list] : MergesByScope(winter_writes)) {
    for (const Merge& m : list) EXPECT_EQ(m.delta, Usage(100, 10)) << scope << " " << m.window;
  }
  EXPECT_THAT(Windows(MergesByScope(winter_writes)["acme||||"]),
              ElementsAre(Window("10s", Utc(2025, 1, 15, 12, 0, 0)),
                          Window("day", Utc(2025, 1, 15, 0, 0, 0)),
                          Window("hour", Utc(2025, 1, 15, 12, 0, 0)),
                          Window("month", Utc(2025, 1, 1, 0, 0, 0))));

  // In summer (BST, UTC+1) hours still coincide; days and months do not.
  RollupAccumulator summer(&plan);
  summer.Add(kAlice, Utc(2025, 7, 15, 12, 0, 3), Usage(100, 10));
  storage::WriteSet summer_writes;
  summer.AppendTo(&summer_writes);
  EXPECT_EQ(summer_writes.size(), 6u * 6u);
  EXPECT_THAT(
      Windows(MergesByScope(summer_writes)["acme||||"]),
      ElementsAre(
          Window("10s", Utc(2025, 7, 15, 12, 0, 0)), Window("day", Utc(2025, 7, 14, 23, 0, 0)),
          Window("day", Utc(2025, 7, 15, 0, 0, 0)), Window("hour", Utc(2025, 7, 15, 12, 0, 0)),
          Window("month", Utc(2025, 6, 30, 23, 0, 0)), Window("month", Utc(2025, 7, 1, 0, 0, 0))));
}

TEST(RollupAccumulatorTest, EventsInOneBucketSumIntoOneMergePerKey) {
  const RollupPlan plan = RollupPlan::Everything({absl::UTCTimeZone(), Zone("Asia/Kolkata")});
  RollupAccumulator rollup(&plan);
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 0, 1), Usage(100, 10));
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 0, 9), Usage(5, 1));
  storage::WriteSet writes;
  rollup.AppendTo(&writes);
  EXPECT_EQ(writes.size(), 6u * 7u);
  storage::CounterRecord sum = Usage(100, 10);
  ASSERT_TRUE(sum.Add(Usage(5, 1)));
  for (const auto& [scope, list] : MergesByScope(writes)) {
    for (const Merge& m : list) {
      EXPECT_EQ(m.delta, sum) << scope << " " << m.window;
      EXPECT_EQ(m.delta[storage::kRequests], 2u);
    }
  }
}

TEST(RollupAccumulatorTest, SharedWindowsSumAcrossBucketsAndUsers) {
  const RollupPlan plan = RollupPlan::Everything({absl::UTCTimeZone()});
  RollupAccumulator rollup(&plan);
  RequestScope bob = kAlice;
  bob.user = "bob";
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 0, 3), Usage(100, 10));
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 30, 0), Usage(1, 1));  // Another 10 s bucket.
  rollup.Add(bob, Utc(2025, 1, 15, 12, 0, 5), Usage(7, 0));
  storage::WriteSet writes;
  rollup.AppendTo(&writes);
  auto merges = MergesByScope(writes);
  // Alice: two 10 s buckets, one hour / day / month each.
  const auto& alice = merges["acme|research|alice||"];
  ASSERT_EQ(alice.size(), 5u);
  for (const Merge& m : alice) {
    const uint64_t want = m.window == Window("10s", Utc(2025, 1, 15, 12, 0, 0))    ? 110
                          : m.window == Window("10s", Utc(2025, 1, 15, 12, 30, 0)) ? 2
                                                                                   : 112;
    EXPECT_EQ(MetricValue(m.delta, Metric::kTotalTokens), want) << m.window;
  }
  // The team holds both users; its first 10 s bucket sums alice's and bob's usage.
  const auto& team = merges["acme|research|||"];
  ASSERT_EQ(team.size(), 5u);
  for (const Merge& m : team) {
    const uint64_t want = m.window == Window("10s", Utc(2025, 1, 15, 12, 0, 0))    ? 117
                          : m.window == Window("10s", Utc(2025, 1, 15, 12, 30, 0)) ? 2
                                                                                   : 119;
    EXPECT_EQ(MetricValue(m.delta, Metric::kTotalTokens), want) << m.window;
  }
  // Keys are distinct: one merge per key.
  std::vector<std::string> keys;
  for (const auto& op : writes.ops()) keys.push_back(op.key);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::adjacent_find(keys.begin(), keys.end()), keys.end());
  EXPECT_EQ(writes.size(), 6u * 5u /* alice */ + 2u * 4u /* bob's user scopes */);
}

// "scope: granularities kept" for the 8 scopes of a request with api_key and model.
std::string RenderPlan(const RollupPlan& plan) {
  RequestScope scope = kAlice;
  scope.api_key = "key-1";
  std::vector<std::string> lines;
  for (const storage::ScopeKey& s : RollupScopes(scope)) {
    std::vector<std::string> kept;
    for (storage::Granularity g : {storage::Granularity::kTenSeconds, storage::Granularity::kHour,
                                   storage::Granularity::kDay, storage::Granularity::kMonth}) {
      if (plan.Keeps(s, g)) kept.push_back(GranularityName(g));
    }
    lines.push_back(absl::StrCat(ScopeLine(s), ": ", absl::StrJoin(kept, ",")));
  }
  return absl::StrJoin(lines, "\n");
}

Policy OneLimitPolicy(std::string id, std::string team, std::string user, std::string model,
                      WindowKind window) {
  Policy p;
  p.id = std::move(id);
  p.selector.tenant = "acme";
  p.selector.team = std::move(team);
  p.selector.user = std::move(user);
  p.selector.model = std::move(model);
  p.limits.push_back(Limit{Metric::kTotalTokens, window, 1000});
  return p;
}

TEST(RollupPlanTest, BaselineKeepsWhatQueriesRead) {
  EXPECT_EQ(RenderPlan(RollupPlan::ForPolicies({}, {absl::UTCTimeZone()})),
            "acme||||: 10s,hour,day,month\n"
            "acme|research|||: hour,day,month\n"
            "acme|research|alice||: day,month\n"
            "acme|research|alice|key-1|: day,month\n"
            "acme||||gpt-4o: hour,day,month\n"
            "acme|research|||gpt-4o: \n"
            "acme|research|alice||gpt-4o: \n"
            "acme|research|alice|key-1|gpt-4o: ");
}

TEST(RollupPlanTest, PoliciesAddWhatTheirLimitsRead) {
  const RollupPlan plan =
      RollupPlan::ForPolicies({OneLimitPolicy("user-minute", "*", "*", "", WindowKind::kMinute),
                               OneLimitPolicy("team-model-hour", "*", "", "*", WindowKind::kHour)},
                              {absl::UTCTimeZone()});
  EXPECT_EQ(RenderPlan(plan),
            "acme||||: 10s,hour,day,month\n"
            "acme|research|||: hour,day,month\n"
            "acme|research|alice||: 10s,day,month\n"
            "acme|research|alice|key-1|: day,month\n"
            "acme||||gpt-4o: hour,day,month\n"
            "acme|research|||gpt-4o: hour\n"
            "acme|research|alice||gpt-4o: \n"
            "acme|research|alice|key-1|gpt-4o: ");
}

TEST(RollupAccumulatorTest, WritesOnlyWhatThePlanKeeps) {
  const RollupPlan plan = RollupPlan::ForPolicies({}, {absl::UTCTimeZone()});
  RollupAccumulator rollup(&plan);
  rollup.Add(kAlice, Utc(2025, 1, 15, 12, 0, 3), Usage(100, 10));
  storage::WriteSet writes;
  rollup.AppendTo(&writes);
  std::vector<std::string> lines;
  for (const auto& [scope, list] : MergesByScope(writes)) {
    lines.push_back(absl::StrCat(scope, " ", absl::StrJoin(Windows(list), " ")));
  }
  EXPECT_THAT(lines, ElementsAre("acme|research|alice|| day@2025-01-15T00:00:00Z "
                                 "month@2025-01-01T00:00:00Z",
                                 "acme|research||| day@2025-01-15T00:00:00Z "
                                 "hour@2025-01-15T12:00:00Z month@2025-01-01T00:00:00Z",
                                 "acme|||| 10s@2025-01-15T12:00:00Z day@2025-01-15T00:00:00Z "
                                 "hour@2025-01-15T12:00:00Z month@2025-01-01T00:00:00Z",
                                 "acme||||gpt-4o day@2025-01-15T00:00:00Z "
                                 "hour@2025-01-15T12:00:00Z month@2025-01-01T00:00:00Z"));
  EXPECT_EQ(writes.size(), 12u);
}

TEST(MetricValueTest, TotalIsInputPlusOutput) {
  TokenCounts t;
  t.input = 100;
  t.cached_input = 40;  // Part of input: not added again.
  t.output = 50;
  t.reasoning = 20;  // Part of output: not added again.
  const storage::CounterRecord r = UsageRecord(t, nullptr);
  EXPECT_EQ(MetricValue(r, Metric::kTotalTokens), 150u);
  EXPECT_EQ(MetricValue(r, Metric::kInputTokens), 100u);
  EXPECT_EQ(MetricValue(r, Metric::kOutputTokens), 50u);
  EXPECT_EQ(MetricValue(r, Metric::kRequests), 1u);
  EXPECT_EQ(MetricValue(r, Metric::kCostMicroUsd), 0u);
  EXPECT_EQ(r[storage::kUnpricedRequests], 1u);
}

TEST(UsageRecordTest, PricedUsageCarriesCost) {
  const ModelPrice price{"openai", "gpt-4o", 2'500'000, 1'250'000, 10'000'000};
  TokenCounts t;
  t.input = 1000;
  t.cached_input = 400;
  t.output = 500;
  const storage::CounterRecord r = UsageRecord(t, &price);
  EXPECT_EQ(MetricValue(r, Metric::kCostMicroUsd), 7000u);  // 1500 + 500 + 5000.
  EXPECT_EQ(r[storage::kUnpricedRequests], 0u);
  EXPECT_EQ(r[storage::kCachedInputTokens], 400u);
}

}  // namespace
}  // namespace tokenmeter::aggregator
