#include "services/aggregator/rollup.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/aggregator/pricing.h"
#include "services/aggregator/windows.h"

namespace tokenmeter::aggregator {

using storage::CounterRecord;
using storage::Granularity;
using storage::ScopeKey;

CounterRecord UsageRecord(const TokenCounts& tokens, const ModelPrice* price) {
  CounterRecord r;
  r[storage::kInputTokens] = tokens.input;
  r[storage::kCachedInputTokens] = tokens.cached_input;
  r[storage::kOutputTokens] = tokens.output;
  r[storage::kReasoningTokens] = tokens.reasoning;
  r[storage::kRequests] = 1;
  if (price == nullptr) {
    r[storage::kUnpricedRequests] = 1;
  } else {
    // Bounded tokens (EventLimits) and prices (PriceTable) cannot overflow; stay defensive.
    r[storage::kCostMicroUsd] = CostMicroUsd(*price, tokens).value_or(UINT64_MAX / 1024);
  }
  return r;
}

std::vector<ScopeKey> RollupScopes(const RequestScope& s) {
  std::vector<ScopeKey> out;
  out.reserve(8);
  const std::string all_models;
  for (const std::string* model : {&all_models, &s.model}) {
    if (model == &s.model && s.model.empty()) break;
    out.push_back({s.tenant, "", "", "", *model});
    out.push_back({s.tenant, s.team, "", "", *model});
    out.push_back({s.tenant, s.team, s.user, "", *model});
    if (!s.api_key.empty()) out.push_back({s.tenant, s.team, s.user, s.api_key, *model});
  }
  return out;
}

uint64_t MetricValue(const CounterRecord& r, Metric metric) {
  switch (metric) {
    case Metric::kInputTokens:
      return r[storage::kInputTokens];
    case Metric::kOutputTokens:
      return r[storage::kOutputTokens];
    case Metric::kTotalTokens:
      return r[storage::kInputTokens] + r[storage::kOutputTokens];
    case Metric::kRequests:
      return r[storage::kRequests];
    case Metric::kCostMicroUsd:
      return r[storage::kCostMicroUsd];
  }
  return 0;
}

RollupPlan RollupPlan::Everything(std::vector<absl::TimeZone> zones) {
  RollupPlan plan;
  plan.zones_ = std::move(zones);
  for (auto& by_model : plan.masks_) {
    for (uint8_t& mask : by_model) mask = 0xff;
  }
  return plan;
}

RollupPlan RollupPlan::ForPolicies(const std::vector<Policy>& policies,
                                   std::vector<absl::TimeZone> zones) {
  using storage::Level;
  RollupPlan plan;
  plan.zones_ = std::move(zones);
  for (Granularity g :
       {Granularity::kTenSeconds, Granularity::kHour, Granularity::kDay, Granularity::kMonth}) {
    plan.Add(Level::kTenant, false, g);
  }
  for (Granularity g : {Granularity::kHour, Granularity::kDay, Granularity::kMonth}) {
    plan.Add(Level::kTeam, false, g);
    plan.Add(Level::kTenant, true, g);
  }
  for (Granularity g : {Granularity::kDay, Granularity::kMonth}) {
    plan.Add(Level::kUser, false, g);
    plan.Add(Level::kApiKey, false, g);
  }
  for (const Policy& p : policies) {
    const storage::ScopeKey shape{p.selector.tenant, p.selector.team, p.selector.user,
                                  p.selector.api_key, p.selector.model};
    for (const Limit& l : p.limits) {
      const Granularity g = l.window == WindowKind::kMinute ? Granularity::kTenSeconds
                            : l.window == WindowKind::kHour ? Granularity::kHour
                            : l.window == WindowKind::kDay  ? Granularity::kDay
                                                            : Granularity::kMonth;
      plan.Add(storage::LevelOf(shape), !shape.model.empty(), g);
    }
  }
  return plan;
}

void RollupPlan::Add(storage::Level level, bool with_model, Granularity g) {
  masks_[static_cast<int>(level)][with_model ? 1 : 0] |= 1 << static_cast<int>(g);
}

bool RollupPlan::Keeps(const ScopeKey& scope, Granularity g) const {
  return (masks_[static_cast<int>(storage::LevelOf(scope))][scope.model.empty() ? 0 : 1] >>
          static_cast<int>(g)) &
         1;
}

void RollupAccumulator::Add(const RequestScope& scope, absl::Time at, const CounterRecord& delta) {
  const int64_t bucket = absl::ToUnixSeconds(SubBucketStart(at));
  std::string key =
      absl::StrCat(scope.tenant, std::string(1, '\0'), scope.team, std::string(1, '\0'), scope.user,
                   std::string(1, '\0'), scope.api_key, std::string(1, '\0'), scope.model,
                   std::string(1, '\0'), bucket);
  auto [it, inserted] = by_scope_bucket_.try_emplace(std::move(key));
  if (inserted) {
    it->second.scope = scope;
    it->second.bucket = bucket;
  }
  it->second.sum.Add(delta);
}

void RollupAccumulator::AppendTo(storage::WriteSet* writes) const {
  absl::flat_hash_map<std::string, CounterRecord> deltas;
  // The calendar buckets of one 10 s bucket: a 10 s bucket never straddles an hour boundary
  // (every zone's offset is a multiple of 15 min), so they are computed once per bucket.
  absl::flat_hash_map<int64_t, std::vector<std::pair<Granularity, int64_t>>> calendar;
  for (const auto& [unused, entry] : by_scope_bucket_) {
    auto& windows = calendar[entry.bucket];
    if (windows.empty()) {
      const absl::Time t = absl::FromUnixSeconds(entry.bucket);
      windows.emplace_back(Granularity::kTenSeconds, entry.bucket);
      const std::pair<WindowKind, Granularity> kinds[] = {
          {WindowKind::kHour, Granularity::kHour},
          {WindowKind::kDay, Granularity::kDay},
          {WindowKind::kMonth, Granularity::kMonth}};
      for (const absl::TimeZone& tz : plan_->zones()) {
        for (const auto& [kind, g] : kinds) {
          std::pair<Granularity, int64_t> w{g,
                                            absl::ToUnixSeconds(CalendarWindowStart(kind, t, tz))};
          // Zones with the same window start share the bucket: count it once.
          if (std::find(windows.begin(), windows.end(), w) == windows.end()) windows.push_back(w);
        }
      }
    }
    for (const ScopeKey& scope : RollupScopes(entry.scope)) {
      for (const auto& [g, start] : windows) {
        if (plan_->Keeps(scope, g)) deltas[storage::CounterKey(scope, g, start)].Add(entry.sum);
      }
    }
  }
  for (auto& [key, delta] : deltas) writes->MergeCounter(key, delta);
}

}  // namespace tokenmeter::aggregator
