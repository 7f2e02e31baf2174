#include "services/simulator/stats.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/common/grpc_status.h"

namespace tokenmeter::simulator {

void Stats::RecordDecision(const std::string& tenant, const std::string& team,
                           const v1::QuotaDecision& decision, uint64_t estimate_tokens) {
  absl::MutexLock lock(&mu_);
  ++s_.reserves;
  TeamStats& t = s_.teams[{tenant, team}];
  if (decision.fallback()) {
    ++(decision.result() == v1::QuotaDecision::ALLOWED ? s_.fallback_allowed : s_.fallback_denied);
  }
  if (decision.result() == v1::QuotaDecision::ALLOWED) {
    ++t.allowed;
    if (decision.shadow_denied()) ++t.shadow_denied;
  } else {
    ++t.denied;
    t.tokens_denied += estimate_tokens;
    std::string by = decision.fallback() ? "(sidecar fallback)" : "(unknown)";
    for (const v1::LimitStatus& l : decision.limits()) {
      if (l.exceeded() && l.mode() != v1::MODE_SHADOW) {
        by = l.policy_id();
        break;
      }
    }
    ++t.denied_by[by];
  }
  auto& limits = s_.limits[tenant];
  for (const v1::LimitStatus& l : decision.limits()) {
    LimitSeen& seen =
        limits[absl::StrCat(l.policy_id(), "|", l.scope(), "|", l.metric(), "|", l.window())];
    seen.status = l;
    seen.sequence = ++sequence_;
  }
}

void Stats::RecordCommit(const std::string& tenant, const std::string& team, uint64_t tokens,
                         bool queued) {
  absl::MutexLock lock(&mu_);
  TeamStats& t = s_.teams[{tenant, team}];
  ++t.committed;
  t.tokens_committed += tokens;
  if (queued) ++s_.commits_queued;
}

void Stats::RecordRelease(const std::string& tenant, const std::string& team) {
  absl::MutexLock lock(&mu_);
  ++s_.teams[{tenant, team}].released;
}

void Stats::RecordRpcError(const std::string& method, const grpc::Status& status) {
  const absl::Status s = common::FromGrpcStatus(status);
  absl::MutexLock lock(&mu_);
  ++s_.rpc_errors[absl::StrCat(method, " ", absl::StatusCodeToString(s.code()))];
}

void Stats::RecordReportAccepted(const v1::ReportRequest& request) {
  absl::MutexLock lock(&mu_);
  ++s_.report_calls;
  for (const v1::UsageEvent& e : request.events()) {
    ReportedUsage& r = s_.reported[e.application()];
    ++r.events;
    r.total_tokens += e.tokens().input() + e.tokens().output();
  }
}

void Stats::RecordReportRetry() {
  absl::MutexLock lock(&mu_);
  ++s_.report_retries;
}

void Stats::RecordReportFailed(uint64_t events) {
  absl::MutexLock lock(&mu_);
  s_.report_events_failed += events;
}

StatsSnapshot Stats::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return s_;
}

}  // namespace tokenmeter::simulator
