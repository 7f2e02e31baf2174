// What the simulator observed: quota decisions, commits, releases and RPC errors per
// tenant/team, the latest state of every policy limit it was shown, and ingest outcomes.
// The reporter reads consistent copies (Snapshot) of it.
//
// Thread-safety: every method is thread-safe (one mutex; calls are cheap).
#ifndef TOKENMETER_SERVICES_SIMULATOR_STATS_H_
#define TOKENMETER_SERVICES_SIMULATOR_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"
#include "tokenmeter/v1/ingest.pb.h"
#include "tokenmeter/v1/quota.pb.h"

namespace tokenmeter::simulator {

struct TeamStats {
  uint64_t allowed = 0;
  uint64_t denied = 0;
  uint64_t shadow_denied = 0;  // Allowed, but a shadow-mode limit would have denied.
  uint64_t committed = 0;
  uint64_t released = 0;                      // Simulated call failures.
  uint64_t tokens_committed = 0;              // Actual total tokens of committed calls.
  uint64_t tokens_denied = 0;                 // Estimates of denied calls (never spent).
  std::map<std::string, uint64_t> denied_by;  // First exceeded enforced policy -> count.
};

// The most recent status of one limit (policy, scope, metric, window) seen in a decision.
struct LimitSeen {
  v1::LimitStatus status;
  uint64_t sequence = 0;  // Order of observation.
};

struct StatsSnapshot {
  // (tenant, team) -> stats.
  std::map<std::pair<std::string, std::string>, TeamStats> teams;
  // tenant -> "policy|scope|metric|window" -> latest status.
  std::map<std::string, std::map<std::string, LimitSeen>> limits;
  // "Method CODE_NAME" -> count.
  std::map<std::string, uint64_t> rpc_errors;
  uint64_t reserves = 0;
  uint64_t ingest_batches = 0;
  uint64_t ingest_events_applied = 0;
  uint64_t ingest_events_duplicate = 0;
  uint64_t ingest_events_rejected = 0;
  uint64_t ingest_events_dropped = 0;
  // Outcome name -> batches, for outcomes other than APPLIED.
  std::map<std::string, uint64_t> ingest_outcomes;
};

class Stats {
 public:
  // A Reserve answer for `tenant`/`team` asking `estimate_tokens`.
  void RecordDecision(const std::string& tenant, const std::string& team,
                      const v1::QuotaDecision& decision, uint64_t estimate_tokens);
  void RecordCommit(const std::string& tenant, const std::string& team, uint64_t tokens);
  void RecordRelease(const std::string& tenant, const std::string& team);
  void RecordRpcError(const std::string& method, const grpc::Status& status);
  void RecordIngestAck(const v1::IngestAck& ack);
  void RecordIngestDropped(uint64_t events);

  StatsSnapshot Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  StatsSnapshot s_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_STATS_H_
