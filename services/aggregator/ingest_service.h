// gRPC adapter of IngestService: one reactor per stream converts batches, hands them to the
// IngestEngine and writes the acks back in order. Up to kWindow batches of one stream may be
// in flight; past that the reactor stops reading (back-pressure through HTTP/2 flow control).
#ifndef TOKENMETER_SERVICES_AGGREGATOR_INGEST_SERVICE_H_
#define TOKENMETER_SERVICES_AGGREGATOR_INGEST_SERVICE_H_

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "services/aggregator/ingest_engine.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"

namespace tokenmeter::aggregator {

class IngestService final : public v1::IngestService::CallbackService {
 public:
  static constexpr int kWindow = 64;

  explicit IngestService(IngestEngine* engine) : engine_(engine) {}

  grpc::ServerBidiReactor<v1::IngestBatch, v1::IngestAck>* Ingest(
      grpc::CallbackServerContext* context) override;

  // Makes every open stream stop reading and finish with UNAVAILABLE ("shard draining") as
  // soon as its in-flight batches are acked, so producers reconnect elsewhere or later instead
  // of waiting for the shutdown deadline. New streams are refused the same way.
  void Drain();

  class Reactor;

 private:
  friend class Reactor;
  IngestEngine* const engine_;
  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<Reactor*> reactors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_INGEST_SERVICE_H_
