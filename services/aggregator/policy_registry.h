// The policies and prices in force on one shard: the file configuration (hot-reloaded), the
// Admin overrides (persisted in the policies column family of this shard), and the price table
// (file or Admin, whichever has the higher version; persisted in meta).
//
// Thread-safety: all methods are thread-safe. Readers get immutable snapshots
// (shared_ptr<const ...>) that stay valid while they hold them; writers publish new ones.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_POLICY_REGISTRY_H_
#define TOKENMETER_SERVICES_AGGREGATOR_POLICY_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/pricing.h"
#include "services/aggregator/rollup.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

class PolicyRegistry {
 public:
  explicit PolicyRegistry(storage::Store* store);

  // Loads overrides and the stored price table. Call once before serving.
  absl::Status Load();

  // Replaces the file configuration (policies, and prices if the file has a newer version).
  void SetFileConfig(ConfigFile config);

  // Validates and persists an override for the tenant named by its selector (which must be a
  // literal tenant). Returns InvalidArgument naming the field.
  absl::Status UpsertOverride(Policy policy);
  // Returns whether an override existed.
  absl::StatusOr<bool> DeleteOverride(const std::string& tenant, const std::string& id);

  // Persists and publishes a new price table. FailedPrecondition if its version is not newer.
  absl::Status SetPrices(PriceTable prices);

  // The policies in effect for `tenant` (file + overrides), cached until the next change.
  std::shared_ptr<const std::vector<Policy>> PoliciesFor(const std::string& tenant);
  // Every file policy plus every override (for listing).
  std::vector<Policy> AllPolicies();

  std::shared_ptr<const PriceTable> Prices();

  // The time zones whose calendar buckets are kept: UTC plus every policy's zone.
  std::shared_ptr<const std::vector<absl::TimeZone>> Zones();
  // What ingest and commits write: the baseline plus what the policies read, in Zones().
  std::shared_ptr<const RollupPlan> Plan();

  // Whether calendar buckets are kept for `zone_name`.
  bool HasZone(const std::string& zone_name);

 private:
  void RebuildLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  storage::Store* const store_;
  absl::Mutex mu_;
  std::vector<Policy> file_policies_ ABSL_GUARDED_BY(mu_);
  // tenant -> overrides.
  absl::flat_hash_map<std::string, std::vector<Policy>> overrides_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<const std::vector<Policy>>> cache_
      ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PriceTable> prices_ ABSL_GUARDED_BY(mu_) = std::make_shared<PriceTable>();
  std::shared_ptr<const std::vector<absl::TimeZone>> zones_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> zone_names_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const RollupPlan> plan_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_POLICY_REGISTRY_H_
