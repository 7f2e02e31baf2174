#include "services/sidecar/report_service.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/aggregator/proto_convert.h"
#include "services/common/grpc_status.h"

namespace tokenmeter::sidecar {

absl::Status ReportService::Accept(const v1::ReportRequest& request, v1::ReportResponse* response) {
  if (request.events_size() == 0 || request.events_size() > kMaxEventsPerCall) {
    return absl::InvalidArgumentError(absl::StrCat("events: a call carries 1..", kMaxEventsPerCall,
                                                   " events, got ", request.events_size()));
  }
  const absl::Time now = absl::Now();
  std::vector<std::pair<int, std::string>> queued;
  queued.reserve(request.events_size());
  std::vector<bool> touched(shards_->size(), false);
  for (int i = 0; i < request.events_size(); ++i) {
    const v1::UsageEvent& e = request.events(i);
    if (absl::Status s = aggregator::ValidateEvent(aggregator::FromProto(e), limits_, now, nullptr);
        !s.ok()) {
      counters_.events_invalid.fetch_add(1, std::memory_order_relaxed);
      return absl::InvalidArgumentError(absl::StrCat("events[", i, "].", s.message()));
    }
    const int shard = shards_->OwnerOf(e.tenant());
    touched[shard] = true;
    queued.emplace_back(shard, e.SerializeAsString());
  }
  if (absl::Status s = queue_->Append(queued); !s.ok()) {
    if (absl::IsResourceExhausted(s)) {
      counters_.calls_queue_full.fetch_add(1, std::memory_order_relaxed);
    }
    return s;
  }
  counters_.events_accepted.fetch_add(queued.size(), std::memory_order_relaxed);
  response->set_accepted(static_cast<uint32_t>(queued.size()));
  for (int shard = 0; shard < shards_->size(); ++shard) {
    if (touched[shard]) wake_(shard);
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ReportService::Report(grpc::CallbackServerContext* context,
                                                const v1::ReportRequest* request,
                                                v1::ReportResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Appending fsyncs: run it on a worker, never on the gRPC reactor thread.
  pool_->Submit([this, reactor, request, response] {
    reactor->Finish(common::ToGrpcStatus(Accept(*request, response)));
  });
  return reactor;
}

}  // namespace tokenmeter::sidecar
