#include "services/sidecar/sidecar_metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tokenmeter::sidecar {

SidecarMetrics::SidecarMetrics(common::Registry* r, LocalQueue* queue,
                               const std::vector<std::unique_ptr<ShardSender>>* senders,
                               const QuotaProxy* quota, const ReportService* report)
    : queue_(queue),
      senders_(senders),
      quota_(quota),
      report_(report),
      queue_events_(r->AddGauge("tokenmeter_sidecar_queue_events",
                                "Events in the local queue, not yet acked by their shard.")
                        .WithLabels({})),
      queue_bytes_(
          r->AddGauge("tokenmeter_sidecar_queue_bytes", "Payload bytes in the local queue.")
              .WithLabels({})),
      queue_oldest_age_(r->AddGauge("tokenmeter_sidecar_queue_oldest_age_seconds",
                                    "Age of the oldest queued event (0 when empty).")
                            .WithLabels({})),
      batches_sent_(r->AddCounter("tokenmeter_sidecar_batches_sent_total",
                                  "Batches written to a shard stream (including resends).",
                                  {"shard"})),
      batches_resent_(r->AddCounter("tokenmeter_sidecar_batches_resent_total",
                                    "Batches sent again after a stream broke.", {"shard"})),
      batches_acked_(r->AddCounter("tokenmeter_sidecar_batches_acked_total",
                                   "Batches acknowledged (applied or duplicate) by a shard.",
                                   {"shard"})),
      events_acked_(r->AddCounter("tokenmeter_sidecar_events_acked_total",
                                  "Events in acknowledged batches.", {"shard"})),
      reconnects_(r->AddCounter("tokenmeter_sidecar_reconnects_total",
                                "Stream reconnect attempts to a shard.", {"shard"})),
      stream_errors_(r->AddCounter("tokenmeter_sidecar_stream_errors_total",
                                   "Shard streams that broke (shard down, network, timeout).",
                                   {"shard"})),
      connected_(r->AddGauge(
          "tokenmeter_sidecar_shard_connected",
          "1 while the channel to the shard is connected (gRPC READY), idle or not.", {"shard"})),
      report_events_(r->AddCounter("tokenmeter_sidecar_report_events_total",
                                   "Events offered to Report, by result (accepted, invalid).",
                                   {"result"})),
      report_queue_full_(r->AddCounter("tokenmeter_sidecar_report_queue_full_total",
                                       "Report calls refused with RESOURCE_EXHAUSTED (queue "
                                       "full).")
                             .WithLabels({})),
      quota_forwarded_(r->AddCounter("tokenmeter_sidecar_quota_forwarded_total",
                                     "Quota calls forwarded to an owner shard.")
                           .WithLabels({})),
      quota_fallback_(r->AddCounter("tokenmeter_sidecar_quota_fallback_total",
                                    "Quota decisions made by the failure mode because the shard "
                                    "was unreachable, by result (allowed, denied).",
                                    {"result"})),
      quota_deferred_(r->AddCounter("tokenmeter_sidecar_quota_deferred_total",
                                    "Commit/Release calls stored for later delivery.")
                          .WithLabels({})) {
  r->AddCollector([this] { Collect(); });
}

void SidecarMetrics::Collect() {
  const QueueStats stats = queue_->Stats();
  queue_events_.Set(static_cast<double>(stats.events));
  queue_bytes_.Set(static_cast<double>(stats.bytes));
  queue_oldest_age_.Set(stats.oldest_enqueued == absl::InfiniteFuture()
                            ? 0
                            : absl::ToDoubleSeconds(absl::Now() - stats.oldest_enqueued));
  for (size_t i = 0; i < senders_->size(); ++i) {
    const SenderCounters& c = (*senders_)[i]->counters();
    const std::vector<std::string> shard = {absl::StrCat(i)};
    batches_sent_.WithLabels(shard).Mirror(static_cast<double>(c.batches_sent.load()));
    batches_resent_.WithLabels(shard).Mirror(static_cast<double>(c.batches_resent.load()));
    batches_acked_.WithLabels(shard).Mirror(static_cast<double>(c.batches_acked.load()));
    events_acked_.WithLabels(shard).Mirror(static_cast<double>(c.events_acked.load()));
    reconnects_.WithLabels(shard).Mirror(static_cast<double>(c.reconnects.load()));
    stream_errors_.WithLabels(shard).Mirror(static_cast<double>(c.errors.load()));
    connected_.WithLabels(shard).Set((*senders_)[i]->channel_ready() ? 1 : 0);
  }
  const ReportCounters& rc = report_->counters();
  report_events_.WithLabels({"accepted"}).Mirror(static_cast<double>(rc.events_accepted.load()));
  report_events_.WithLabels({"invalid"}).Mirror(static_cast<double>(rc.events_invalid.load()));
  report_queue_full_.Mirror(static_cast<double>(rc.calls_queue_full.load()));
  const QuotaProxyCounters& qc = quota_->counters();
  quota_forwarded_.Mirror(static_cast<double>(qc.forwarded.load()));
  quota_fallback_.WithLabels({"allowed"}).Mirror(static_cast<double>(qc.fallback_allowed.load()));
  quota_fallback_.WithLabels({"denied"}).Mirror(static_cast<double>(qc.fallback_denied.load()));
  quota_deferred_.Mirror(static_cast<double>(qc.deferred.load()));
}

}  // namespace tokenmeter::sidecar
