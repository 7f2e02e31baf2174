// ReportService as served by the sidecar: validates events at the edge (a bad event fails the
// call naming its index and field, and nothing of the call is queued), routes each to its
// owner shard, appends them durably to the local queue, and wakes the shard senders.
#ifndef TOKENMETER_SERVICES_SIDECAR_REPORT_SERVICE_H_
#define TOKENMETER_SERVICES_SIDECAR_REPORT_SERVICE_H_

#include <atomic>
#include <functional>

#include "services/aggregator/event_validation.h"
#include "services/common/worker_pool.h"
#include "services/sidecar/local_queue.h"
#include "services/sidecar/shard_channels.h"
#include "tokenmeter/v1/sidecar.grpc.pb.h"

namespace tokenmeter::sidecar {

struct ReportCounters {
  std::atomic<uint64_t> events_accepted{0};
  std::atomic<uint64_t> events_invalid{0};
  std::atomic<uint64_t> calls_queue_full{0};
};

class ReportService final : public v1::ReportService::CallbackService {
 public:
  static constexpr int kMaxEventsPerCall = 1000;

  // `wake(shard)` is called after events for `shard` were queued.
  ReportService(const ShardChannels* shards, LocalQueue* queue, common::WorkerPool* pool,
                aggregator::EventLimits limits, std::function<void(int)> wake)
      : shards_(shards), queue_(queue), pool_(pool), limits_(limits), wake_(std::move(wake)) {}

  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* context,
                                   const v1::ReportRequest* request,
                                   v1::ReportResponse* response) override;

  const ReportCounters& counters() const { return counters_; }

 private:
  absl::Status Accept(const v1::ReportRequest& request, v1::ReportResponse* response);

  const ShardChannels* const shards_;
  LocalQueue* const queue_;
  common::WorkerPool* const pool_;
  const aggregator::EventLimits limits_;
  const std::function<void(int)> wake_;
  ReportCounters counters_;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_REPORT_SERVICE_H_
