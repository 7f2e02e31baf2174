// Exactly-once ingest of producer batches into one shard.
//
// A single apply thread takes every queued batch in arrival order, decides each one's outcome
// (duplicate, gap, fenced, not owner, applied), and writes all applied batches' counter deltas,
// event-id dedup keys, dead letters and producer watermarks in ONE WriteBatch; only after that
// write is durable are the batches' callbacks run. Batches queued while a write is in flight
// form the next group, so one fsync serves many batches (explicit group commit), and no two
// batches can race on the same event_id or producer watermark.
//
// Thread-safety: Submit() may be called from any thread; callbacks run on the apply thread and
// must not block.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_INGEST_ENGINE_H_
#define TOKENMETER_SERVICES_AGGREGATOR_INGEST_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "services/aggregator/aggregator_metrics.h"
#include "services/aggregator/event_validation.h"
#include "services/aggregator/model.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/shard_identity.h"
#include "services/common/clock.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

struct IngestBatchInput {
  std::string producer_id;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  std::vector<Event> events;
  size_t wire_bytes = 0;  // Size of the batch as received (for metrics).
  // Filled by IngestEngine::Validate on the caller's thread (one entry per event: OK, or the
  // error and its reason); if empty, the apply thread validates.
  std::vector<std::pair<absl::Status, std::string>> validation;
};

enum class IngestOutcome { kApplied, kDuplicate, kGap, kFenced, kNotOwner, kInvalid, kUnavailable };
const char* IngestOutcomeName(IngestOutcome outcome);

struct IngestResult {
  uint64_t seq = 0;
  IngestOutcome outcome = IngestOutcome::kUnavailable;
  uint64_t expected_seq = 0;
  uint32_t applied_events = 0;
  uint32_t duplicate_events = 0;
  uint32_t rejected_events = 0;
  std::string detail;
};

struct IngestOptions {
  // Most events in one batch. Default: 10,000.
  size_t max_events_per_batch = 10'000;
  // How long event-id dedup keys are kept. Default: 7 days.
  absl::Duration dedup_window = absl::Hours(24 * 7);
  // Most events applied in one write (group commit). Default: 50,000.
  size_t max_events_per_write = 50'000;
  EventLimits event_limits;
};

// Counts since start, for metrics and tests.
struct IngestCounters {
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> applied_events{0};
  std::atomic<uint64_t> duplicate_events{0};
  std::atomic<uint64_t> duplicate_batches{0};
  std::atomic<uint64_t> rejected_events{0};
  std::atomic<uint64_t> write_errors{0};
};

class IngestEngine {
 public:
  using Done = std::function<void(IngestResult)>;

  IngestEngine(storage::Store* store, PolicyRegistry* registry, ShardIdentity shard,
               common::Clock* clock, IngestOptions options);
  ~IngestEngine();  // Drains the queue, then stops the apply thread.

  IngestEngine(const IngestEngine&) = delete;
  IngestEngine& operator=(const IngestEngine&) = delete;

  // Queues a batch; never blocks. `done` runs exactly once, on the apply thread, after the
  // outcome is durable (or known to need no write). Callers bound their own in-flight batches
  // (the ingest service allows a fixed window per stream), which bounds the queue.
  void Submit(IngestBatchInput batch, Done done);

  // Validates every event of `batch` and records the results in batch->validation, so the
  // apply thread does not have to. Thread-safe; call on the receiving thread before Submit.
  void Validate(IngestBatchInput* batch) const;

  // Stops accepting work after the queued batches are applied. Idempotent.
  void Stop();

  const IngestCounters& counters() const { return counters_; }

  // Records metrics from now on. Call before the first Submit; `metrics` must outlive this.
  void set_metrics(AggregatorMetrics* metrics) { metrics_ = metrics; }

 private:
  struct Pending {
    IngestBatchInput batch;
    Done done;
  };
  struct ProducerState {
    uint64_t epoch = 0;
    uint64_t watermark = 0;
  };
  class Group;

  void ApplyLoop();
  void ApplyGroup(std::vector<Pending> group);
  absl::StatusOr<ProducerState> LoadProducer(const std::string& producer_id);

  storage::Store* const store_;
  PolicyRegistry* const registry_;
  const ShardIdentity shard_;
  common::Clock* const clock_;
  const IngestOptions options_;
  IngestCounters counters_;
  AggregatorMetrics* metrics_ = nullptr;

  absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Touched only by the apply thread.
  absl::flat_hash_map<std::string, ProducerState> producers_;
  uint64_t dead_letter_seq_ = 0;

  std::thread apply_thread_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_INGEST_ENGINE_H_
