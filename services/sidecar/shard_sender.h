// Streams one shard's batches from the local queue over one ordered IngestService stream, and
// deletes them from the queue when the shard acknowledges them.
//
// On any stream failure (shard killed, network cut, ack overdue) it reconnects with exponential
// backoff and jitter, on the same channel, and resends every unacknowledged batch with its
// original seq: the shard's watermark turns a resend of an applied batch into DUPLICATE.
//
// Thread-safety: Start/Stop from one thread; Wake() from any thread.
#ifndef TOKENMETER_SERVICES_SIDECAR_SHARD_SENDER_H_
#define TOKENMETER_SERVICES_SIDECAR_SHARD_SENDER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "services/sidecar/local_queue.h"

namespace tokenmeter::sidecar {

struct SenderOptions {
  // Most events per batch. Default: 5000 (bigger batches, bigger shard commit groups).
  size_t max_batch_events = 5000;
  // Batches in flight per stream. Default: 32.
  int window = 32;
  // How often an idle sender looks for new events (appends also wake it). Default: 50 ms.
  absl::Duration idle_poll = absl::Milliseconds(50);
  // An unacked batch older than this breaks the stream (silent network loss). Default: 10 s.
  absl::Duration ack_timeout = absl::Seconds(10);
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(5);
};

struct SenderCounters {
  std::atomic<uint64_t> batches_sent{0};
  std::atomic<uint64_t> batches_resent{0};
  std::atomic<uint64_t> batches_acked{0};
  std::atomic<uint64_t> events_acked{0};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<bool> connected{false};
};

class ShardSender {
 public:
  ShardSender(int shard, std::string target, std::shared_ptr<grpc::Channel> channel,
              LocalQueue* queue, SenderOptions options);
  ~ShardSender();  // Stop().

  void Start();
  // Stops after the current stream attempt; unacked batches stay queued.
  void Stop();
  // Hints that new events were queued (cuts the linger short).
  void Wake();

  const SenderCounters& counters() const { return counters_; }
  // True while the channel to the shard is connected (gRPC state READY), idle or not.
  bool channel_ready() const { return channel_->GetState(false) == GRPC_CHANNEL_READY; }

 private:
  void Run();
  // One stream's life. Returns when it breaks or on Stop; true if any batch was acked.
  bool RunStream();

  const int shard_;
  const std::string target_;
  const std::shared_ptr<grpc::Channel> channel_;
  LocalQueue* const queue_;
  const SenderOptions options_;
  SenderCounters counters_;
  uint64_t last_acked_ = 0;  // Highest seq acked in this process (sender thread only).
  uint64_t highest_sent_ = 0;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_SHARD_SENDER_H_
