// What the simulator observed: quota decisions (and which of them a sidecar answered from its
// fallback), commits (and which a sidecar queued), releases and RPC errors per tenant/team,
// the latest state of every policy limit it was shown, and the report-only usage the sidecars
// accepted per application. The reporter reads consistent copies (Snapshot) of it.
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
#include "tokenmeter/v1/quota.pb.h"
#include "tokenmeter/v1/sidecar.pb.h"

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

// Report-only usage of one application that a sidecar accepted (durably queued).
struct ReportedUsage {
  uint64_t events = 0;
  uint64_t total_tokens = 0;  // input + output.
};

struct StatsSnapshot {
  // (tenant, team) -> stats.
  std::map<std::pair<std::string, std::string>, TeamStats> teams;
  // tenant -> "policy|scope|metric|window" -> latest status.
  std::map<std::string, std::map<std::string, LimitSeen>> limits;
  // "Method CODE_NAME" -> count.
  std::map<std::string, uint64_t> rpc_errors;
  uint64_t reserves = 0;
  // Reserve decisions a sidecar made from the policy's failure mode (decision.fallback): the
  // owner shard was unreachable.
  uint64_t fallback_allowed = 0;
  uint64_t fallback_denied = 0;
  // Commits a sidecar stored for later delivery (CommitResponse.queued): shard unreachable.
  uint64_t commits_queued = 0;
  // application -> usage accepted by a sidecar's ReportService.
  std::map<std::string, ReportedUsage> reported;
  uint64_t report_calls = 0;          // Report calls answered OK.
  uint64_t report_retries = 0;        // Report calls repeated (same event_ids) after an error.
  uint64_t report_events_failed = 0;  // Events of calls given up on (never accepted).
};

class Stats {
 public:
  // A Reserve answer for `tenant`/`team` asking `estimate_tokens`.
  void RecordDecision(const std::string& tenant, const std::string& team,
                      const v1::QuotaDecision& decision, uint64_t estimate_tokens);
  // A successful Commit of `tokens` actual total tokens; `queued` as the sidecar answered.
  void RecordCommit(const std::string& tenant, const std::string& team, uint64_t tokens,
                    bool queued);
  void RecordRelease(const std::string& tenant, const std::string& team);
  void RecordRpcError(const std::string& method, const grpc::Status& status);
  // A Report call answered OK: every event of `request` is accepted.
  void RecordReportAccepted(const v1::ReportRequest& request);
  void RecordReportRetry();
  // A Report call given up on: its `events` were not accepted.
  void RecordReportFailed(uint64_t events);

  StatsSnapshot Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  StatsSnapshot s_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_STATS_H_
