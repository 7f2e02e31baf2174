#include "services/aggregator/aggregator_metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tokenmeter::aggregator {
namespace {

using common::Registry;

std::vector<std::string> With(std::vector<std::string> labels, const std::string& extra) {
  labels.push_back(extra);
  return labels;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseUsageLabels(const std::string& csv) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipWhitespace())) {
    const std::string label(part);
    if (label != "tenant" && label != "team" && label != "user" && label != "api_key" &&
        label != "model") {
      return absl::InvalidArgumentError(absl::StrCat(
          "usage metric label \"", label, "\": want tenant, team, user, api_key or model"));
    }
    out.push_back(label);
  }
  return out;
}

AggregatorMetrics::AggregatorMetrics(Registry* r, UsageLabelOptions usage)
    : ingest_batches(r->AddCounter("tokenmeter_ingest_batches_total",
                                   "Ingest batches answered, by outcome.", {"outcome"})),
      ingest_events_applied(r->AddCounter("tokenmeter_ingest_events_applied_total",
                                          "Events counted (first time their event_id was seen).")
                                .WithLabels({})),
      ingest_events_duplicate(
          r->AddCounter("tokenmeter_ingest_events_duplicate_total",
                        "Events skipped because their event_id was already counted.")
              .WithLabels({})),
      ingest_events_rejected(r->AddCounter(
          "tokenmeter_ingest_events_rejected_total",
          "Malformed events refused and kept in the dead-letter list, by reason.", {"reason"})),
      ingest_bytes(
          r->AddCounter("tokenmeter_ingest_bytes_total", "Bytes of ingest batches received.")
              .WithLabels({})),
      ingest_apply_seconds(r->AddHistogram("tokenmeter_ingest_apply_duration_seconds",
                                           "Time to make one group of batches durable.",
                                           common::LatencyBuckets())
                               .WithLabels({})),
      ingest_write_batches(r->AddHistogram("tokenmeter_ingest_group_batches",
                                           "Batches made durable by one write (group commit).",
                                           {1, 2, 4, 8, 16, 32, 64, 128})
                               .WithLabels({})),
      quota_decisions(r->AddCounter(
          "tokenmeter_quota_decisions_total",
          "Quota decisions by operation (check, reserve) and result (allowed, denied, "
          "shadow_denied: allowed although a shadow policy would have denied).",
          {"op", "result"})),
      quota_decision_seconds(r->AddHistogram("tokenmeter_quota_decision_duration_seconds",
                                             "Time to decide a quota call, by operation.",
                                             common::LatencyBuckets(), {"op"})),
      quota_closed(r->AddCounter(
          "tokenmeter_quota_reservations_closed_total",
          "Reservations closed, by how (commit, release, expire, late_commit).", {"how"})),
      quota_open_reservations(r->AddGauge("tokenmeter_quota_open_reservations",
                                          "Reservations currently holding budget.")
                                  .WithLabels({})),
      quota_limit_used_ratio(r->AddGauge(
          "tokenmeter_quota_limit_used_ratio",
          "Budget burn of a limit at its last decision: (used + outstanding) / limit, the "
          "request included when allowed. 1 = budget exhausted.",
          {"policy", "scope", "metric", "window", "mode"}, usage.max_series)),
      quota_scope_decisions(
          r->AddCounter("tokenmeter_quota_scope_decisions_total",
                        "Quota decisions by tenant, team, operation and result (see "
                        "tokenmeter_quota_decisions_total).",
                        {"tenant", "team", "op", "result"}, usage.max_series)),
      usage_tokens(r->AddCounter("tokenmeter_usage_tokens_total",
                                 "Tokens counted, by scope and gen_ai token type (input, "
                                 "cached_input, output, reasoning).",
                                 With(usage.labels, "type"), usage.max_series,
                                 /*keep_unfolded=*/1)),
      usage_requests(r->AddCounter("tokenmeter_usage_requests_total",
                                   "LLM calls counted, by scope.", usage.labels, usage.max_series)),
      usage_cost(r->AddCounter("tokenmeter_usage_cost_micro_usd_total",
                               "Cost counted in micro-USD, by scope.", usage.labels,
                               usage.max_series)),
      usage_unpriced_requests(
          r->AddCounter("tokenmeter_usage_unpriced_requests_total",
                        "Calls whose provider/model has no price: tokens counted, cost not.")
              .WithLabels({})),
      storage_live_sst_bytes(
          r->AddGauge("tokenmeter_storage_live_sst_bytes", "Bytes of live RocksDB SST files.")
              .WithLabels({})),
      storage_memtable_bytes(
          r->AddGauge("tokenmeter_storage_memtable_bytes", "Bytes of RocksDB memtables.")
              .WithLabels({})),
      storage_pending_compaction_bytes(
          r->AddGauge("tokenmeter_storage_pending_compaction_bytes",
                      "Bytes RocksDB estimates it still has to compact.")
              .WithLabels({})),
      storage_write_stopped(r->AddGauge("tokenmeter_storage_write_stopped",
                                        "1 while RocksDB stops writes (stall), else 0.")
                                .WithLabels({})),
      storage_write_errors(r->AddCounter("tokenmeter_storage_write_errors_total",
                                         "Writes that failed (disk full, I/O error).")
                               .WithLabels({})),
      storage_max_disk_bytes(r->AddGauge("tokenmeter_storage_max_disk_bytes",
                                         "SST disk budget (--max-disk-bytes); 0 = none.")
                                 .WithLabels({})),
      storage_disk_available_bytes(
          r->AddGauge("tokenmeter_storage_disk_available_bytes",
                      "Bytes available to the shard on its data directory's filesystem.")
              .WithLabels({})),
      policy_reloads(r->AddCounter("tokenmeter_policy_reloads_total",
                                   "Policy file loads, by result (ok, error).", {"result"})),
      policy_reloads_ok(policy_reloads.WithLabels({"ok"})),
      policy_reloads_failed(policy_reloads.WithLabels({"error"})),
      policy_count(
          r->AddGauge("tokenmeter_policy_policies", "Policies in force (file and overrides).")
              .WithLabels({})),
      usage_(std::move(usage)) {}

void AggregatorMetrics::RecordUsage(const std::vector<std::string>& values,
                                    const storage::CounterRecord& r) {
  const std::pair<const char*, storage::CounterField> types[] = {
      {"input", storage::kInputTokens},
      {"cached_input", storage::kCachedInputTokens},
      {"output", storage::kOutputTokens},
      {"reasoning", storage::kReasoningTokens}};
  for (const auto& [type, field] : types) {
    if (r[field] != 0)
      usage_tokens.WithLabels(With(values, type)).Inc(static_cast<double>(r[field]));
  }
  usage_requests.WithLabels(values).Inc(static_cast<double>(r[storage::kRequests]));
  if (r[storage::kCostMicroUsd] != 0) {
    usage_cost.WithLabels(values).Inc(static_cast<double>(r[storage::kCostMicroUsd]));
  }
  if (r[storage::kUnpricedRequests] != 0) {
    usage_unpriced_requests.Inc(static_cast<double>(r[storage::kUnpricedRequests]));
  }
}

std::vector<std::string> AggregatorMetrics::UsageLabelValues(const RequestScope& s) const {
  std::vector<std::string> values;
  values.reserve(usage_.labels.size());
  for (const std::string& label : usage_.labels) {
    if (label == "tenant") values.push_back(s.tenant);
    if (label == "team") values.push_back(s.team);
    if (label == "user") values.push_back(s.user);
    if (label == "api_key") values.push_back(s.api_key);
    if (label == "model") values.push_back(s.model);
  }
  return values;
}

}  // namespace tokenmeter::aggregator
