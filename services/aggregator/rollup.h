// Write-time roll-up: turns usage (of events, or of committed reservations) into counter
// deltas for every scope and window a policy or a query may read.
//
// Every usage lands in the scopes tenant, team, user (and api_key, if set), each both across
// models and for its model; and in the 10 s sub-bucket plus the hour, day and month bucket of
// every time zone in use. Deltas are summed per key before they are written, so a batch of
// 1000 events from a few users costs a few dozen merges, not tens of thousands.
//
// Thread-compatible: one accumulator per batch, used by one thread.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_
#define TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "services/aggregator/model.h"
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

class RollupAccumulator {
 public:
  // `zones` are the time zones whose calendar buckets are kept (at least UTC). Not owned;
  // must outlive the accumulator.
  explicit RollupAccumulator(const std::vector<absl::TimeZone>* zones) : zones_(zones) {}

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
  const std::vector<absl::TimeZone>* zones_;
  // "tenant\0team\0user\0key\0model\0bucket" -> summed usage.
  absl::flat_hash_map<std::string, Entry> by_scope_bucket_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_ROLLUP_H_
