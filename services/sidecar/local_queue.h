// The sidecar's durable local queue: usage events accepted from services, kept on disk until
// the owner shard has acknowledged them.
//
// Guarantees:
//  - Append() returns OK only after its events are fsynced (concurrent appends share one fsync
//    through RocksDB's group commit). Past max_bytes it returns ResourceExhausted and queues
//    nothing of that call.
//  - Events are grouped into batches per shard with gap-free sequence numbers. A batch is
//    persisted (its seq and its exact range of entries) before it is handed out, so after a crash
//    the same seq is resent with the same events: the shard's watermark makes the resend a no-op
//    if the first send was applied.
//  - Entries are deleted only by Ack(), after the shard acknowledged their batch.
//  - producer_id is created once per data directory; epoch grows at every Open().
//
// Thread-safety: all methods are thread-safe.
#ifndef TOKENMETER_SERVICES_SIDECAR_LOCAL_QUEUE_H_
#define TOKENMETER_SERVICES_SIDECAR_LOCAL_QUEUE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"

namespace tokenmeter::sidecar {

struct QueueOptions {
  std::string path;
  // Bytes of queued payloads at most. Default: 256 MiB.
  uint64_t max_bytes = 256ull << 20;
  int shard_count = 1;
};

struct QueuedBatch {
  int shard = 0;
  uint64_t seq = 0;
  std::vector<std::string> payloads;  // Serialized tokenmeter.v1.UsageEvent, in order.
};

struct QueueStats {
  uint64_t events = 0;
  uint64_t bytes = 0;
  absl::Time oldest_enqueued = absl::InfiniteFuture();  // InfiniteFuture if empty.
};

class LocalQueue {
 public:
  static absl::StatusOr<std::unique_ptr<LocalQueue>> Open(const QueueOptions& options);
  ~LocalQueue();

  const std::string& producer_id() const { return producer_id_; }
  uint64_t epoch() const { return epoch_; }

  // Durably appends (shard, serialized event) pairs. ResourceExhausted when full,
  // Unavailable / DataLoss on I/O errors; in every error case nothing of the call is queued.
  absl::Status Append(const std::vector<std::pair<int, std::string>>& events);

  // Returns the first batch of `shard` with seq > after_seq: an already formed, unacked one,
  // or a new one of up to max_events durable entries (persisted before it is returned).
  // nullopt if the shard has nothing to send.
  absl::StatusOr<std::optional<QueuedBatch>> NextBatch(int shard, uint64_t after_seq,
                                                       size_t max_events);

  // Deletes batch `seq` of `shard` and its entries. Acks of unknown batches are ignored.
  absl::Status Ack(int shard, uint64_t seq);

  QueueStats Stats();

  // Deferred calls: quota calls (Commit, Release) that could not reach their shard, kept
  // durably until a retrier delivers them. `kind` is caller-defined.
  struct Deferred {
    uint64_t id = 0;
    uint8_t kind = 0;
    std::string payload;
  };
  // Durably stores a deferred call (fsynced before it returns).
  absl::Status AddDeferred(uint8_t kind, const std::string& payload);
  // Returns up to `max` deferred calls, oldest first.
  absl::StatusOr<std::vector<Deferred>> ListDeferred(size_t max);
  absl::Status RemoveDeferred(uint64_t id);

  // Fallback reservations: Reserve calls the failure mode allowed while the owner shard was
  // unreachable. The shard never saw them, so their Commit is turned into a usage event.
  // Stores `payload` (a serialized tokenmeter.v1.Scope) durably under (tenant, id).
  absl::Status PutFallbackReservation(const std::string& tenant, const std::string& id,
                                      const std::string& payload);
  // Returns and deletes the payload stored under (tenant, id); nullopt if there is none.
  absl::StatusOr<std::optional<std::string>> TakeFallbackReservation(const std::string& tenant,
                                                                     const std::string& id);
  // Deletes fallback reservations stored before `cutoff` (never committed). Returns how many.
  absl::StatusOr<int> DropFallbackReservationsBefore(absl::Time cutoff);

 private:
  struct BatchInfo {
    uint64_t first = 0;  // Entry sequence numbers, inclusive.
    uint64_t last = 0;
    uint64_t bytes = 0;
    uint64_t events = 0;
  };
  struct ShardState {
    uint64_t next_batch_seq = 1;
    uint64_t last_batched = 0;              // Highest entry in any batch.
    std::map<uint64_t, BatchInfo> batches;  // Unacked, by seq.
  };

  LocalQueue() = default;
  absl::Status Load(const QueueOptions& options);
  absl::StatusOr<std::vector<std::string>> ReadEntries(int shard, const BatchInfo& info);

  std::unique_ptr<rocksdb::DB> db_;
  std::string producer_id_;
  uint64_t epoch_ = 0;
  uint64_t max_bytes_ = 0;

  absl::Mutex mu_;
  uint64_t next_entry_ ABSL_GUARDED_BY(mu_) = 1;
  // Entries below `durable_frontier_` + 1 are all on disk; appends in flight hold ranges.
  uint64_t durable_frontier_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, std::pair<uint64_t, bool>> in_flight_
      ABSL_GUARDED_BY(mu_);                  // first->(last, done)
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Queued + reserved by in-flight appends.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<ShardState> shards_ ABSL_GUARDED_BY(mu_);
  uint64_t next_deferred_ ABSL_GUARDED_BY(mu_) = 1;
  // Serializes NextBatch/Ack per queue: batch formation must see a stable frontier.
  absl::Mutex batch_mu_ ABSL_ACQUIRED_BEFORE(mu_);
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_LOCAL_QUEUE_H_
