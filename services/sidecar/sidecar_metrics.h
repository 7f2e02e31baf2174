// Every metric of the sidecar, declared in this one place and filled at scrape time from the
// components' own atomic counters (so the hot paths carry no metrics code).
// Thread-safety: Collect() may run concurrently with everything else.
#ifndef TOKENMETER_SERVICES_SIDECAR_SIDECAR_METRICS_H_
#define TOKENMETER_SERVICES_SIDECAR_SIDECAR_METRICS_H_

#include <memory>
#include <vector>

#include "services/common/metrics.h"
#include "services/sidecar/local_queue.h"
#include "services/sidecar/quota_proxy.h"
#include "services/sidecar/report_service.h"
#include "services/sidecar/shard_sender.h"

namespace tokenmeter::sidecar {

class SidecarMetrics {
 public:
  // Registers the metrics and a collector reading the given components (not owned; they must
  // outlive every scrape).
  SidecarMetrics(common::Registry* registry, LocalQueue* queue,
                 const std::vector<std::unique_ptr<ShardSender>>* senders, const QuotaProxy* quota,
                 const ReportService* report);

 private:
  void Collect();

  LocalQueue* const queue_;
  const std::vector<std::unique_ptr<ShardSender>>* const senders_;
  const QuotaProxy* const quota_;
  const ReportService* const report_;

  common::Gauge& queue_events_;
  common::Gauge& queue_bytes_;
  common::Gauge& queue_oldest_age_;
  common::Family<common::Counter>& batches_sent_;    // {shard}
  common::Family<common::Counter>& batches_resent_;  // {shard}
  common::Family<common::Counter>& batches_acked_;   // {shard}
  common::Family<common::Counter>& events_acked_;    // {shard}
  common::Family<common::Counter>& reconnects_;      // {shard}
  common::Family<common::Counter>& stream_errors_;   // {shard}
  common::Family<common::Gauge>& connected_;         // {shard}
  common::Family<common::Counter>& report_events_;   // {result}
  common::Counter& report_queue_full_;
  common::Counter& quota_forwarded_;
  common::Family<common::Counter>& quota_fallback_;  // {result}
  common::Counter& quota_deferred_;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_SIDECAR_METRICS_H_
