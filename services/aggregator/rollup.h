// Write-time roll-up: turns usage (of events, or of committed reservations) into counter
// deltas for every scope and window a policy or a query may read.
//
// A usage may land in the scopes tenant, team, user (and api_key, if set), each both across
// models and for its model, in the 10 s sub-bucket and in the hour, day and month bucket of
// every time zone in use. Which (level, model or not, granularity) combinations are kept is the
// RollupPlan: a fixed baseline for queries plus whatever the policies read. Writing every
// combination costs ~40 merges per distinct user per batch; the plan keeps it to a few.
// Deltas are summed per key before they are written.
//
// Thread-compatible: one accumulator per batch, used by one thread.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_
#define TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "services/aggregator/model.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/pricing.h"
#include "storage/counter_record.h"
#include "storage/key_codec.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

// The counter record of one call: tokens, one request, its cost (0 and one unpriced request
// if there is no price).
storage::CounterRecord UsageRecord(const TokenCounts& tokens, const ModelPrice* price);

// The scopes a usage of `scope` rolls up into (6, or 8 with an api_key).
std::vector<storage::ScopeKey> RollupScopes(const RequestScope& scope);

// Reads `metric` out of a counter record (total tokens = input + output).
uint64_t MetricValue(const storage::CounterRecord& record, Metric metric);

// Which granularities are kept per level of the hierarchy, with and without a model, and in
// which time zones calendar buckets are kept. An immutable value.
//
// Baseline (for Usage queries and top-N): tenant: 10 s, hour, day, month; team: hour, day,
// month; user and api_key: day, month; tenant x model: hour, day, month. Policies add the
// granularity of each limit at their selector's level (minute windows read 10 s buckets).
// A policy that needs a combination nobody kept before starts counting when it is loaded.
class RollupPlan {
 public:
  // Keeps every combination (tests, tools).
  static RollupPlan Everything(std::vector<absl::TimeZone> zones);
  // The baseline plus what `policies` read.
  static RollupPlan ForPolicies(const std::vector<Policy>& policies,
                                std::vector<absl::TimeZone> zones);

  bool Keeps(const storage::ScopeKey& scope, storage::Granularity granularity) const;
  const std::vector<absl::TimeZone>& zones() const { return zones_; }

 private:
  void Add(storage::Level level, bool with_model, storage::Granularity granularity);

  std::vector<absl::TimeZone> zones_;
  uint8_t masks_[5][2] = {};  // [level][with model]: bit (1 << granularity).
};

class RollupAccumulator {
 public:
  // Writes what `plan` keeps. Not owned; must outlive the accumulator.
  explicit RollupAccumulator(const RollupPlan* plan) : plan_(plan) {}

  // Adds usage `delta` of `scope` at time `at`.
  void Add(const RequestScope& scope, absl::Time at, const storage::CounterRecord& delta);

  // Appends one merge per distinct counter key to `writes`.
  void AppendTo(storage::WriteSet* writes) const;

  bool empty() const { return by_scope_bucket_.empty(); }

 private:
  struct Entry {
    RequestScope scope;
    int64_t bucket;
    storage::CounterRecord sum;
  };
  const RollupPlan* plan_;
  // "tenant\0team\0user\0key\0model\0bucket" -> summed usage.
  absl::flat_hash_map<std::string, Entry> by_scope_bucket_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_
