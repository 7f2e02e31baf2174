// Clients of the sidecar's ReportService for the fault tests, and the ground truth they keep.
//
// A ClientFleet runs a few client threads. Each makes calls of fresh events with unique
// event_ids (spread over the given tenants) and keeps a call until it gets a final answer:
//  - OK: the events are acknowledged; they go into the Ledger (what the shards must count).
//  - RESOURCE_EXHAUSTED with give_up_on_full: the call is abandoned (its events go into
//    ClientStats::events_rejected and must never be counted).
//  - anything else (sidecar killed, deadline): the SAME request (same event_ids) is sent again
//    after a bounded backoff, until the fleet's deadline.
// Every `resend_every`-th call also re-reports an already acknowledged call verbatim, as a
// client retry would: those events must count once.
//
// Thread-safety: Ledger and ClientStats are thread-safe; a ClientFleet is driven from one thread.
#ifndef TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLIENTS_H_
#define TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLIENTS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tokenmeter/v1/event.pb.h"

namespace tokenmeter::faults {

// Usage of one tenant: what a shard reports and what the ledger expects.
struct Totals {
  uint64_t input = 0;
  uint64_t cached_input = 0;
  uint64_t output = 0;
  uint64_t reasoning = 0;
  uint64_t requests = 0;
  bool operator==(const Totals&) const = default;
};
std::string Render(const Totals& t);

// Distinct acknowledged events per tenant and their token sums. Thread-safe.
class Ledger {
 public:
  // Adds every event whose (tenant, event_id) is not in the ledger yet.
  void Add(const std::vector<v1::UsageEvent>& events) ABSL_LOCKS_EXCLUDED(mu_);
  // Totals of every tenant in `tenants` (zero for a tenant with nothing acknowledged).
  std::map<std::string, Totals> Expected(const std::vector<std::string>& tenants) const
      ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t events() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> ids_ ABSL_GUARDED_BY(mu_);  // tenant + '/' + event_id.
  std::map<std::string, Totals> totals_ ABSL_GUARDED_BY(mu_);
};

struct ClientStats {
  std::atomic<uint64_t> calls_ok{0};
  std::atomic<uint64_t> calls_failed{0};           // Attempts answered with an error.
  std::atomic<uint64_t> calls_resent{0};           // Same request sent again after an error.
  std::atomic<uint64_t> calls_full{0};             // RESOURCE_EXHAUSTED answers.
  std::atomic<uint64_t> events_acked{0};           // Fresh events acknowledged.
  std::atomic<uint64_t> bytes_acked{0};            // Their serialized size.
  std::atomic<uint64_t> events_rejected{0};        // Abandoned after RESOURCE_EXHAUSTED.
  std::atomic<uint64_t> events_reported_again{0};  // Acked events re-reported (dedup check).
  // Abandoned calls that had an earlier attempt with an unknown outcome (not OK, not
  // RESOURCE_EXHAUSTED): their events may legitimately have been queued.
  std::atomic<uint64_t> ambiguous_rejects{0};

  // absl::ToUnixNanos of the latest OK answer (0: none yet).
  std::atomic<int64_t> last_ok_unix_ns{0};
  // Error answers by gRPC status code (0..16).
  std::atomic<uint64_t> failures_by_code[17] = {};

  // "UNAVAILABLE=12 DEADLINE_EXCEEDED=1": the non-zero entries of failures_by_code.
  std::string FailureSummary() const;
  void RecordError(const std::string& error) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::string> Errors() const ABSL_LOCKS_EXCLUDED(mu_);  // At most 20 kept.
  void RecordFullMessage(const std::string& message) ABSL_LOCKS_EXCLUDED(mu_);
  std::string FullMessage() const ABSL_LOCKS_EXCLUDED(mu_);  // The first one seen.

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);
  std::string full_message_ ABSL_GUARDED_BY(mu_);
};

struct FleetOptions {
  std::string target;  // The sidecar: "unix:<path>".
  std::vector<std::string> tenants;
  std::string id_prefix;  // Unique per fleet; clients add "c<i>-e<n>".
  int clients = 4;
  int events_per_call = 100;
  // Fresh events per second per client; 0 = as fast as the sidecar answers.
  double events_per_second = 0;
  // Clients keep making calls while fewer than min_events_per_client were acknowledged or
  // `keep_going` is true; never more than max_events_per_client fresh events.
  uint64_t min_events_per_client = 0;
  uint64_t max_events_per_client = 1'000'000;
  int resend_every = 0;  // 0 = never.
  bool give_up_on_full = false;
  absl::Duration call_timeout = absl::Seconds(10);
  absl::Duration max_backoff = absl::Milliseconds(300);
  // Hard bound: a client still holding an unanswered call then records an error.
  absl::Time deadline = absl::InfiniteFuture();
};

class ClientFleet {
 public:
  ClientFleet(FleetOptions options, Ledger* ledger, ClientStats* stats)
      : options_(std::move(options)), ledger_(ledger), stats_(stats) {}
  ~ClientFleet();  // StopAndJoin().

  void Start();
  // Clears keep_going and waits for every client to finish its minimum and its open call.
  // Returns true iff every client ended without recording an error.
  bool StopAndJoin();

 private:
  bool RunClient(int index);

  const FleetOptions options_;
  Ledger* const ledger_;
  ClientStats* const stats_;
  std::atomic<bool> keep_going_{true};
  std::vector<std::thread> threads_;
  std::unique_ptr<std::atomic<bool>[]> ok_;
};

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLIENTS_H_
