// Every metric of the aggregator, declared in this one place. Names follow
// tokenmeter_<subsystem>_<name>_<unit>; counters end in _total; base units.
//
// Token usage and cost carry tenant / team / model labels by default (never user: per-user
// labels kill Prometheus); the label set is opt-in configurable and every usage family is capped
// (series past the cap are folded into "other"; see common::Registry).
//
// Thread-safety: thread-safe (metrics are atomics; families lock only to add a series).
#ifndef TOKENMETER_SERVICES_AGGREGATOR_AGGREGATOR_METRICS_H_
#define TOKENMETER_SERVICES_AGGREGATOR_AGGREGATOR_METRICS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/aggregator/model.h"
#include "services/common/metrics.h"
#include "storage/counter_record.h"

namespace tokenmeter::aggregator {

struct UsageLabelOptions {
  // Which scope labels token/cost series carry, from {tenant, team, user, api_key, model}.
  // Default: tenant, team, model.
  std::vector<std::string> labels = {"tenant", "team", "model"};
  // Most series per usage family. Default: 5000.
  size_t max_series = 5000;
};

// Parses "tenant,team,model" into options; InvalidArgument names an unknown label.
absl::StatusOr<std::vector<std::string>> ParseUsageLabels(const std::string& csv);

class AggregatorMetrics {
 public:
  AggregatorMetrics(common::Registry* registry, UsageLabelOptions usage);

  // Ingest.
  common::Family<common::Counter>& ingest_batches;  // {outcome}
  common::Counter& ingest_events_applied;
  common::Counter& ingest_events_duplicate;
  common::Family<common::Counter>& ingest_events_rejected;  // {reason}
  common::Counter& ingest_bytes;
  common::Histogram& ingest_apply_seconds;
  common::Histogram& ingest_write_batches;  // Batches per group commit.

  // Quota.
  common::Family<common::Counter>& quota_decisions;           // {op, result}
  common::Family<common::Histogram>& quota_decision_seconds;  // {op}
  common::Family<common::Counter>& quota_closed;              // {how}: commit, release, expire
  common::Gauge& quota_open_reservations;
  // Budget burn of each limit seen in a decision: (used + outstanding) / limit, counting the
  // request when it was allowed. {policy, scope, metric, window, mode}; capped.
  common::Family<common::Gauge>& quota_limit_used_ratio;
  // Decisions by tenant and team (which team is being denied). {tenant, team, op, result}.
  common::Family<common::Counter>& quota_scope_decisions;

  // Usage (what SREs and FinOps watch).
  common::Family<common::Counter>& usage_tokens;    // {labels..., type}
  common::Family<common::Counter>& usage_requests;  // {labels...}
  common::Family<common::Counter>& usage_cost;      // {labels...}
  common::Counter& usage_unpriced_requests;

  // Storage.
  common::Gauge& storage_live_sst_bytes;
  common::Gauge& storage_memtable_bytes;
  common::Gauge& storage_pending_compaction_bytes;
  common::Gauge& storage_write_stopped;
  common::Counter& storage_write_errors;
  common::Gauge& storage_max_disk_bytes;        // --max-disk-bytes (0 = no budget).
  common::Gauge& storage_disk_available_bytes;  // Free bytes of the data dir's filesystem.

  // Policies.
  common::Family<common::Counter>& policy_reloads;  // {result}
  common::Counter& policy_reloads_ok;
  common::Counter& policy_reloads_failed;
  common::Gauge& policy_count;

  // Adds a usage record (tokens by type, requests, cost) to the series of `label_values`.
  void RecordUsage(const std::vector<std::string>& label_values,
                   const storage::CounterRecord& usage);

  // Label values of the usage series for one scope, in usage_label_names() order.
  std::vector<std::string> UsageLabelValues(const RequestScope& scope) const;
  const std::vector<std::string>& usage_label_names() const { return usage_.labels; }

 private:
  const UsageLabelOptions usage_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_AGGREGATOR_METRICS_H_
