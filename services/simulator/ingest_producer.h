// An exactly-once IngestService producer, as a sidecar would be, for the report-only
// applications: one sender thread and one bidi stream per shard. Events are queued to their
// tenant's owner shard, cut into batches numbered with a gap-free `seq` per shard, and sent
// stop-and-wait: a batch stays pending until the shard acks it, and is resent with the same
// seq after any stream error (the shard's watermark makes the resend a no-op if the first
// copy was applied). The queue is in memory: the producer's life is the simulator's.
//
// Thread-safety: Add() may be called from any thread; Stop() once, from one thread.
#ifndef TOKENMETER_SERVICES_SIMULATOR_INGEST_PRODUCER_H_
#define TOKENMETER_SERVICES_SIMULATOR_INGEST_PRODUCER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "services/common/shard_router.h"
#include "services/simulator/stats.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"

namespace tokenmeter::simulator {

struct ProducerOptions {
  std::string producer_id;  // e.g. "simulator-<pid>"
  uint64_t epoch = 0;       // Grows at every start, e.g. the start time in unix ms.
  // Most events per batch. Default: 500.
  int max_batch_events = 500;
  // Longest an event waits for its batch to fill. Default: 100 ms.
  absl::Duration linger = absl::Milliseconds(100);
  // Events queued per shard beyond which new ones are dropped (and counted). Default: 100000.
  size_t max_queued_events = 100000;
  // Deadline of each stream. Default: 1 h.
  absl::Duration stream_deadline = absl::Hours(1);
};

class IngestProducer {
 public:
  // Starts one sender thread per shard of `router` (which must outlive this object).
  IngestProducer(const common::ShardRouter* router, Stats* stats, ProducerOptions options);
  ~IngestProducer();  // Stop(0) if not stopped yet.

  IngestProducer(const IngestProducer&) = delete;
  IngestProducer& operator=(const IngestProducer&) = delete;

  // Queues `event` for its tenant's owner shard.
  void Add(v1::UsageEvent event);

  // Stops accepting events, gives the senders up to `flush` to get every queued event acked,
  // then cancels open streams and joins the threads. Returns the events left unacked.
  uint64_t Stop(absl::Duration flush);

 private:
  struct Shard {
    int index = 0;
    absl::Mutex mu;
    std::deque<v1::UsageEvent> queue ABSL_GUARDED_BY(mu);
    grpc::ClientContext* context ABSL_GUARDED_BY(mu) = nullptr;  // The open stream's.
    uint64_t unacked ABSL_GUARDED_BY(mu) = 0;                    // Queued + pending events.
    // Used by the sender thread only.
    std::unique_ptr<v1::IngestService::Stub> stub;
    std::unique_ptr<grpc::ClientContext> stream_context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>> stream;
    std::thread thread;
  };

  void SenderLoop(Shard& shard);
  void OpenStream(Shard& shard);
  // Ends the open stream (half-closing it first if `graceful`) and returns its status.
  grpc::Status CloseStream(Shard& shard, bool graceful);
  // Sends `batch` until the shard has acked it, or refused it for good, or Stop() gave up.
  // May renumber the batch (and *seq) when the shard reports a gap.
  void SendUntilDone(Shard& shard, v1::IngestBatch* batch, uint64_t* seq);
  // Returns true if the batch is done with (applied, duplicate, or refused for good: dropped
  // and counted), false if it must be sent again.
  bool HandleAck(Shard& shard, const v1::IngestAck& ack, v1::IngestBatch* batch, uint64_t* seq);
  // Takes up to max_batch_events from the queue into a batch with sequence `seq`, waiting up
  // to linger for it to fill. Returns false when stopping with nothing left.
  bool NextBatch(Shard& shard, uint64_t seq, v1::IngestBatch* batch);
  bool WaitOrCancelled(absl::Duration d);

  const common::ShardRouter* const router_;
  Stats* const stats_;
  const ProducerOptions options_;
  std::vector<std::unique_ptr<Shard>> shards_;
  absl::Notification stopping_;   // No more events; flush.
  absl::Notification cancelled_;  // Flush time is up: give up.
  bool stopped_ = false;
};

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_INGEST_PRODUCER_H_
