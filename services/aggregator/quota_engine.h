// Token-aware quotas: Check, Reserve, Commit, Release and TTL expiry, decided atomically
// across every matching limit of every level of a tenant's hierarchy.
//
// State: counted usage lives in the counters family (windows in the key, so a changed limit
// applies at once and nothing needs resetting). Open reservations live in the reservations
// family and, for speed, in memory: per tenant stripe, the open reservations and the amount
// they hold per counter scope ("outstanding"). A decision reads used + outstanding under the
// tenant's stripe lock, so two concurrent reservations cannot both take the last budget.
// Writes (fsync) happen outside the lock; a reservation being written is "pending" and a
// repeated call for it waits until its write has landed.
//
// Overshoot bound: a limit can be exceeded only by what Commit records beyond the estimates
// (actual > estimate is recorded, never refused), by usage arriving through Ingest (which is
// not gated), and by shadow-mode policies. Reservations alone never overshoot.
//
// Thread-safety: all public methods are thread-safe and may block on disk I/O; call them from
// worker threads, not gRPC reactor threads.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_QUOTA_ENGINE_H_
#define TOKENMETER_SERVICES_AGGREGATOR_QUOTA_ENGINE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "services/aggregator/aggregator_metrics.h"
#include "services/aggregator/event_validation.h"
#include "services/aggregator/model.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/quota_decision.h"
#include "services/aggregator/shard_identity.h"
#include "services/common/clock.h"
#include "storage/counter_record.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

struct QuotaOptions {
  // TTL when a Reserve gives none. Default: 60 s.
  absl::Duration default_ttl = absl::Seconds(60);
  // Longest TTL accepted. Default: 1 h.
  absl::Duration max_ttl = absl::Hours(1);
  // How long a closed reservation is remembered so repeated Commit / Release / Reserve calls
  // stay idempotent. Default: 24 h.
  absl::Duration closed_retention = absl::Hours(24);
  EventLimits limits;
};

struct CommitOutcome {
  bool reservation_was_open = false;
  bool duplicate = false;
};

struct QuotaCounters {
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> denied{0};
  std::atomic<uint64_t> shadow_denied{0};
  std::atomic<uint64_t> commits{0};
  std::atomic<uint64_t> releases{0};
  std::atomic<uint64_t> expired{0};
};

class QuotaEngine {
 public:
  QuotaEngine(storage::Store* store, PolicyRegistry* registry, ShardIdentity shard,
              common::Clock* clock, QuotaOptions options);

  // Rebuilds open reservations and their outstanding amounts from disk. Call once at start.
  absl::Status Recover();

  // Would `usage` fit? Changes nothing. FailedPrecondition if the tenant is not owned or a
  // cost limit applies to a model without a price.
  absl::StatusOr<Decision> Check(const RequestScope& scope, const TokenCounts& usage);

  // Holds `estimate` against every matching limit if it fits all enforced ones.
  // ttl 0 = default. Idempotent by (tenant, reservation_id).
  absl::StatusOr<Decision> Reserve(const std::string& reservation_id, const RequestScope& scope,
                                   const TokenCounts& estimate, absl::Duration ttl);

  // Records `actual` and releases the hold. NotFound if the reservation is unknown.
  absl::StatusOr<CommitOutcome> Commit(const std::string& tenant, const std::string& reservation_id,
                                       const TokenCounts& actual);

  // Releases the hold. Returns whether the reservation was open. NotFound if unknown.
  absl::StatusOr<bool> Release(const std::string& tenant, const std::string& reservation_id);

  // Expires every open reservation whose TTL has passed (release, or commit the estimate if
  // a matching policy says so). Returns how many expired. Run periodically.
  absl::StatusOr<int> ExpireDue();

  uint64_t open_reservations() const { return open_count_.load(std::memory_order_relaxed); }

  // Records metrics from now on. Call before serving; `metrics` must outlive this.
  void set_metrics(AggregatorMetrics* metrics) { metrics_ = metrics; }
  const QuotaCounters& counters() const { return counters_; }

 private:
  struct Reservation {
    std::string tenant;
    std::string id;
    RequestScope scope;
    TokenCounts estimate;
    storage::CounterRecord held;  // What the reservation holds (estimate, 1 request, cost).
    bool priced = false;
    absl::Time expires_at;
    bool commit_on_expiry = false;
    Decision decision;
    bool pending = false;  // A write for it is in flight.
  };
  struct Stripe {
    absl::Mutex mu;
    absl::flat_hash_map<std::string, Reservation> open ABSL_GUARDED_BY(mu);
    absl::flat_hash_map<storage::ScopeKey, storage::CounterRecord> outstanding ABSL_GUARDED_BY(mu);
    std::set<std::pair<absl::Time, std::string>> by_expiry ABSL_GUARDED_BY(mu);
  };
  enum class CloseKind { kCommit, kRelease, kExpire };

  absl::StatusOr<Decision> ReserveInternal(const std::string& reservation_id,
                                           const RequestScope& scope, const TokenCounts& estimate,
                                           absl::Duration ttl);
  static Reservation NewReservation(std::string tenant, std::string id, RequestScope scope,
                                    TokenCounts estimate);
  Stripe& StripeFor(const std::string& tenant);
  absl::StatusOr<Decision> EvaluateLocked(Stripe& stripe, const RequestScope& scope,
                                          const storage::CounterRecord& request, absl::Time now,
                                          bool* commit_on_expiry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mu);
  // The counter record of `tokens` for one request, priced if the model has a price.
  storage::CounterRecord PriceUsage(const RequestScope& scope, const TokenCounts& tokens,
                                    bool* priced);
  void HoldLocked(Stripe& stripe, Reservation r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mu);
  void UnholdLocked(Stripe& stripe, const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mu);
  // Closes an open reservation: waits for pending writes, writes the new state (and usage),
  // then drops the hold. Returns NotFound if it is not open.
  absl::Status CloseOpen(const std::string& tenant, const std::string& id, CloseKind kind,
                         const TokenCounts* actual);
  // Counts a decision (and its latency since `start`) in the metrics.
  void RecordDecision(const char* op, const RequestScope& scope, const absl::StatusOr<Decision>& d,
                      absl::Time start);
  // Counts a closed reservation and the usage it recorded (if any).
  void RecordClose(const char* how, const RequestScope& scope, const storage::CounterRecord* usage);
  absl::Status WriteReservation(const Reservation& r, int state, absl::Time gc_after,
                                const storage::CounterRecord* usage, absl::Time usage_at);

  storage::Store* const store_;
  PolicyRegistry* const registry_;
  const ShardIdentity shard_;
  common::Clock* const clock_;
  const QuotaOptions options_;
  std::array<Stripe, 64> stripes_;
  std::atomic<uint64_t> open_count_{0};
  QuotaCounters counters_;
  AggregatorMetrics* metrics_ = nullptr;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_QUOTA_ENGINE_H_
