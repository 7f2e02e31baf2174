// Read side of counted usage: time series of one scope, top-N spenders of a tenant, and the
// dead-letter list. Reads only; thread-safe.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_USAGE_READER_H_
#define TOKENMETER_SERVICES_AGGREGATOR_USAGE_READER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/aggregator/model.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/shard_identity.h"
#include "storage/counter_record.h"
#include "storage/key_codec.h"
#include "storage/store.h"
#include "tokenmeter/v1/admin.pb.h"

namespace tokenmeter::aggregator {

struct UsagePoint {
  absl::Time window_start;
  storage::CounterRecord totals;
};

struct Spender {
  storage::ScopeKey scope;
  uint64_t value = 0;
  storage::CounterRecord totals;
};

// What TopSpenders ranks: the scopes one level below the tenant (or its models).
enum class SpenderLevel { kTeam, kUser, kApiKey, kModel };

class UsageReader {
 public:
  // Most points one GetUsage returns, and most spenders one TopSpenders returns.
  static constexpr size_t kMaxPoints = 10'000;
  static constexpr size_t kMaxSpenders = 1'000;

  UsageReader(storage::Store* store, PolicyRegistry* registry, ShardIdentity shard)
      : store_(store), registry_(registry), shard_(shard) {}

  // Usage of `scope` per window of `granularity` in [from, to), windows with usage only.
  // Calendar granularities need `time_zone` to be one whose buckets are kept (UTC or a
  // policy's zone): FailedPrecondition otherwise. InvalidArgument if from >= to or the range
  // spans more than kMaxPoints windows.
  absl::StatusOr<std::vector<UsagePoint>> GetUsage(const storage::ScopeKey& scope,
                                                   storage::Granularity granularity,
                                                   absl::Time from, absl::Time to,
                                                   const std::string& time_zone);

  // The `limit` biggest spenders by `metric` at `level` in the window of `granularity`
  // containing `at`. Sets *window_start.
  absl::StatusOr<std::vector<Spender>> TopSpenders(const std::string& tenant, SpenderLevel level,
                                                   Metric metric, storage::Granularity granularity,
                                                   absl::Time at, const std::string& time_zone,
                                                   size_t limit, absl::Time* window_start);

  // Dead letters, newest first; all tenants if `tenant` is empty. At most `limit`.
  absl::StatusOr<std::vector<v1::DeadLetter>> ListDeadLetters(const std::string& tenant,
                                                              size_t limit);

 private:
  absl::StatusOr<absl::TimeZone> ZoneFor(storage::Granularity g, const std::string& name);
  // FailedPrecondition if the roll-up plan keeps no `g` buckets at the level of `scope`.
  absl::Status CheckKept(const storage::ScopeKey& scope, storage::Granularity g);

  storage::Store* const store_;
  PolicyRegistry* const registry_;
  const ShardIdentity shard_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_USAGE_READER_H_
