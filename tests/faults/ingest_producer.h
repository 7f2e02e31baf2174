// A resilient ingest producer for fault tests, and the ground-truth ledger it keeps.
//
// IngestProducer plays a sidecar against a shard that may die at any moment: it numbers its
// batches with a gap-free seq, pipelines a few of them per stream, keeps every batch until the
// shard acks it APPLIED or DUPLICATE, and when the stream breaks it reconnects (to whatever
// address the Endpoint names now, with bounded backoff), bumps its epoch and resends every
// unacked batch with the SAME seq and content. It also plays a client that retries: batches
// carry a few copies of already-acked events (same event_id, same counts), which must count
// once. Every ack is checked against the batch it answers (an APPLIED ack must count exactly
// the batch's fresh events and skip exactly its retried ones); any other outcome than
// APPLIED / DUPLICATE / UNAVAILABLE is a protocol violation and is recorded as an error.
//
// Ledger: the events the shard has acknowledged, as distinct event_ids per tenant with their
// token sums: what the shard must report, exactly.
//
// Thread-safety: Endpoint, Ledger and ProducerStats are thread-safe; one IngestProducer runs on
// one thread (Run), its counters are read through the shared ProducerStats.
#ifndef TOKENMETER_TESTS_FAULTS_INGEST_PRODUCER_H_
#define TOKENMETER_TESTS_FAULTS_INGEST_PRODUCER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"

namespace tokenmeter::faults {

// The current address of a shard that restarts on a new port. Thread-safe.
class Endpoint {
 public:
  void Set(std::string target) ABSL_LOCKS_EXCLUDED(mu_);
  std::string Get() const ABSL_LOCKS_EXCLUDED(mu_);  // Empty until Set.

 private:
  mutable absl::Mutex mu_;
  std::string target_ ABSL_GUARDED_BY(mu_);
};

struct UsageSums {
  uint64_t input = 0;
  uint64_t cached_input = 0;
  uint64_t output = 0;
  uint64_t reasoning = 0;
  uint64_t requests = 0;
  bool operator==(const UsageSums&) const = default;
};

// Distinct acknowledged event_ids per tenant and their sums. Thread-safe.
class Ledger {
 public:
  // Counts `event` unless its (tenant, event_id) was counted before.
  void Add(const v1::UsageEvent& event) ABSL_LOCKS_EXCLUDED(mu_);
  std::map<std::string, UsageSums> Totals() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> ids_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, UsageSums> totals_ ABSL_GUARDED_BY(mu_);
};

// Counters shared by all producers of a test. Thread-safe.
struct ProducerStats {
  std::atomic<uint64_t> events_made{0};  // Distinct events created.
  std::atomic<uint64_t> batches_made{0};
  std::atomic<uint64_t> batches_resent{0};  // Sent again on a later stream.
  std::atomic<uint64_t> applied_acks{0};
  std::atomic<uint64_t> duplicate_acks{0};  // Batches applied before their ack was lost.
  std::atomic<uint64_t> retried_events{0};  // Client retries skipped by dedup in APPLIED acks.
  std::atomic<uint64_t> unavailable_acks{0};
  std::atomic<uint64_t> streams{0};
  std::atomic<uint64_t> stream_failures{0};  // Broken streams (kill -9, refused connect).

  void RecordError(const std::string& error) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::string> Errors() const ABSL_LOCKS_EXCLUDED(mu_);  // At most 20 kept.

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);
};

struct ProducerOptions {
  std::string producer_id;
  // Fresh events per batch, and copies of acked events added to a batch as client retries.
  int batch_events = 200;
  int retries_per_batch = 5;
  // Batches in flight per stream.
  int pipeline = 4;
  // Tenants the events spread over ("<tenant_prefix>0" ...).
  int tenants = 8;
  std::string tenant_prefix = "crash-t";
  // Keep making batches until at least this many fresh events exist AND *keep_going is false.
  uint64_t min_events = 0;
  const std::atomic<bool>* keep_going = nullptr;
  // Hard bounds: give up (recording an error) when reached.
  absl::Time deadline;
  uint64_t max_events = 10'000'000;
  absl::Duration stream_deadline = absl::Seconds(30);
  absl::Duration max_backoff = absl::Milliseconds(500);
};

class IngestProducer {
 public:
  IngestProducer(int index, ProducerOptions options, const Endpoint* endpoint, Ledger* ledger,
                 ProducerStats* stats);

  // Produces until every batch made is acked, a protocol violation is recorded, or the deadline
  // passes. Returns true iff every batch made was acked and no violation was seen. Production
  // itself stops early at the deadline or max_events: compare ProducerStats::events_made.
  bool Run();

 private:
  struct Batch {
    v1::IngestBatch proto;
    int retries = 0;            // The last `retries` events are copies of acked ones.
    uint64_t streams_sent = 0;  // How many streams carried it.
  };
  enum class StreamEnd { kDone, kBroken, kFatal };

  StreamEnd RunStream();
  // The batch to send at `seq`: an unacked one, or a new one; nullptr if none is due.
  Batch* BatchAt(uint64_t seq);
  void MakeBatch();
  v1::UsageEvent MakeEvent(uint64_t k) const;
  // Checks an ack against its batch; false on a protocol violation (recorded).
  bool CheckAck(const v1::IngestAck& ack, uint64_t expected_seq);
  void Acknowledge(uint64_t seq);
  bool WantsMore() const;

  const int index_;
  const ProducerOptions options_;
  const Endpoint* const endpoint_;
  Ledger* const ledger_;
  ProducerStats* const stats_;

  std::map<uint64_t, Batch> unacked_;  // By seq.
  uint64_t next_seq_ = 1;              // Seq of the next batch to make.
  uint64_t events_made_ = 0;
  uint64_t epoch_ = 0;
  std::deque<v1::UsageEvent> recent_acked_;  // Pool of events to retry.
  std::mt19937_64 rng_;
};

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_INGEST_PRODUCER_H_
