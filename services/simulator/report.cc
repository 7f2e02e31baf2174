#include "services/simulator/report.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "grpcpp/client_context.h"
#include "services/common/grpc_status.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::simulator {
namespace {

using Rows = std::vector<std::vector<std::string>>;

std::string Thousands(uint64_t value) {
  const std::string digits = absl::StrCat(value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Usd(uint64_t micro_usd) {
  return absl::StrFormat("$%s.%04d", Thousands(micro_usd / 1000000),
                         static_cast<int>(micro_usd % 1000000 / 100));
}

std::string Amount(v1::Metric metric, uint64_t value) {
  return metric == v1::METRIC_COST_MICRO_USD ? Usd(value) : Thousands(value);
}

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? "-" : absl::StrFormat("%.1f%%", 100.0 * part / whole);
}

std::string LimitName(const v1::LimitStatus& l) {
  static const char* const kMetrics[] = {
      "?", "input_tokens", "output_tokens", "total_tokens", "requests", "cost"};
  static const char* const kWindows[] = {"?", "minute", "hour", "day", "month"};
  const int m = l.metric() >= 0 && l.metric() <= 5 ? l.metric() : 0;
  const int w = l.window() >= 0 && l.window() <= 4 ? l.window() : 0;
  return absl::StrCat(kMetrics[m], "/", kWindows[w]);
}

// Aligned columns; columns in [first_numeric, end_numeric) right-aligned. Indented by 2.
void PrintRows(std::ostream& out, const Rows& rows, size_t first_numeric, size_t end_numeric) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line = "  ";
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string pad(widths[i] - row[i].size(), ' ');
      const bool numeric = i >= first_numeric && i < end_numeric;
      absl::StrAppend(&line, i > 0 ? "  " : "", numeric ? pad : "", row[i],
                      !numeric && i + 1 < row.size() ? pad : "");
    }
    out << line << "\n";
  }
}

uint64_t ReportedEvents(const StatsSnapshot& s) {
  uint64_t events = 0;
  for (const auto& [application, r] : s.reported) events += r.events;
  return events;
}

TeamStats Sum(const StatsSnapshot& s) {
  TeamStats total;
  for (const auto& [key, t] : s.teams) {
    total.allowed += t.allowed;
    total.denied += t.denied;
    total.committed += t.committed;
    total.released += t.released;
    total.tokens_committed += t.tokens_committed;
    total.tokens_denied += t.tokens_denied;
  }
  return total;
}

}  // namespace

Reporter::Reporter(const Fleet* fleet, const common::ShardRouter* router, const Stats* stats,
                   absl::Duration rpc_timeout, std::ostream* out)
    : fleet_(fleet),
      router_(router),
      stats_(stats),
      rpc_timeout_(rpc_timeout),
      out_(out),
      previous_at_(absl::Now()) {}

void Reporter::Print(absl::Duration elapsed, absl::Duration duration) {
  const StatsSnapshot s = stats_->Snapshot();
  const absl::Time now = absl::Now();
  const double dt = std::max(absl::ToDoubleSeconds(now - previous_at_), 1e-3);
  const TeamStats total = Sum(s), before = Sum(previous_);
  *out_ << absl::StrFormat(
      "\n==== tokenmeter fleet simulator  t=%.0fs of %.0fs "
      "==========================================\n",
      absl::ToDoubleSeconds(elapsed), absl::ToDoubleSeconds(duration));
  *out_ << absl::StrFormat(
      "last %.1fs: %.1f Reserve/s (%.1f allowed/s, %.1f denied/s), %.1f commits/s, "
      "%.1f report-only events/s accepted by sidecars\n",
      dt, (s.reserves - previous_.reserves) / dt, (total.allowed - before.allowed) / dt,
      (total.denied - before.denied) / dt, (total.committed - before.committed) / dt,
      (ReportedEvents(s) - ReportedEvents(previous_)) / dt);
  std::vector<std::string> errors;
  for (const auto& [what, count] : s.rpc_errors) errors.push_back(absl::StrCat(what, " x", count));
  *out_ << "errors so far: " << (errors.empty() ? "none" : absl::StrJoin(errors, ", ")) << "\n";
  *out_ << "answered by a sidecar without the owner shard so far: "
        << Thousands(s.fallback_allowed + s.fallback_denied) << " fallback decisions ("
        << Thousands(s.fallback_allowed) << " allowed, " << Thousands(s.fallback_denied)
        << " denied), " << Thousands(s.commits_queued) << " commits queued\n";
  for (const std::string& tenant : fleet_->tenants) PrintTenant(tenant, s);
  out_->flush();
  previous_ = s;
  previous_at_ = now;
}

void Reporter::PrintTenant(const std::string& tenant, const StatsSnapshot& s) {
  *out_ << "-- " << tenant << " (shard " << router_->OwnerOf(tenant) << ") --\n";
  Rows rows = {{"TEAM", "ALLOWED", "DENIED", "DENY%", "FAILED", "TOKENS_USED", "TOKENS_DENIED",
                "DENIED_BY"}};
  for (const Team& team : fleet_->teams) {
    if (team.tenant != tenant) continue;
    auto it = s.teams.find({tenant, team.team});
    const TeamStats t = it == s.teams.end() ? TeamStats() : it->second;
    std::vector<std::string> by;
    for (const auto& [policy, count] : t.denied_by) by.push_back(absl::StrCat(policy, " x", count));
    rows.push_back({team.team + (team.workload == Workload::kAgent ? " [agentic]" : ""),
                    Thousands(t.allowed), Thousands(t.denied),
                    Percent(t.denied, t.allowed + t.denied), Thousands(t.released),
                    Thousands(t.tokens_committed), Thousands(t.tokens_denied),
                    by.empty() ? "-" : absl::StrJoin(by, ", ")});
  }
  PrintRows(*out_, rows, 1, 7);
  PrintTopSpenders(tenant);
  PrintBudgetBurn(tenant, s);
}

void Reporter::PrintTopSpenders(const std::string& tenant) {
  v1::TopSpendersRequest request;
  request.set_tenant(tenant);
  request.set_level(v1::LEVEL_TEAM);
  request.set_metric(v1::METRIC_TOTAL_TOKENS);
  request.set_granularity(v1::GRANULARITY_DAY);
  request.set_limit(5);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + rpc_timeout_));
  v1::TopSpendersResponse response;
  const grpc::Status status = v1::UsageService::NewStub(router_->ChannelFor(tenant))
                                  ->TopSpenders(&context, request, &response);
  if (!status.ok()) {
    *out_ << "  top spenders: error "
          << absl::StatusCodeToString(common::FromGrpcStatus(status).code()) << ": "
          << status.error_message() << "\n";
    return;
  }
  *out_ << "  top spenders today (UsageService.TopSpenders, team level, day UTC; incl. "
           "report-only usage):\n";
  Rows rows = {{"#", "TEAM", "TOTAL_TOKENS", "REQUESTS", "COST"}};
  int rank = 0;
  for (const v1::Spender& sp : response.spenders()) {
    rows.push_back({absl::StrCat(++rank), sp.scope().team(), Thousands(sp.totals().total_tokens()),
                    Thousands(sp.totals().requests()), Usd(sp.totals().cost_micro_usd())});
  }
  if (rank == 0) rows.push_back({"-", "(no usage yet)", "", "", ""});
  PrintRows(*out_, rows, 2, 5);
}

void Reporter::PrintBudgetBurn(const std::string& tenant, const StatsSnapshot& s) {
  auto it = s.limits.find(tenant);
  if (it == s.limits.end()) return;
  // Per (policy, metric, window): the scope closest to (or furthest over) its limit.
  std::map<std::string, const v1::LimitStatus*> hottest;
  auto burn = [](const v1::LimitStatus& l) {
    return l.limit() == 0 ? 0.0 : static_cast<double>(l.used() + l.outstanding()) / l.limit();
  };
  for (const auto& [key, seen] : it->second) {
    const v1::LimitStatus& l = seen.status;
    const std::string id = absl::StrCat(l.policy_id(), "|", LimitName(l));
    auto [slot, inserted] = hottest.emplace(id, &l);
    if (!inserted && burn(l) > burn(*slot->second)) slot->second = &l;
  }
  std::vector<const v1::LimitStatus*> sorted;
  for (const auto& [id, l] : hottest) sorted.push_back(l);
  std::sort(sorted.begin(), sorted.end(), [&](auto* a, auto* b) { return burn(*a) > burn(*b); });
  *out_ << "  budget burn (latest decision per limit; hottest scope):\n";
  Rows rows = {{"POLICY", "LIMIT", "SCOPE", "USED+HELD", "OF", "BURN", "STATE"}};
  for (const v1::LimitStatus* l : sorted) {
    std::string state = l->exceeded() ? "EXCEEDED" : "ok";
    if (l->mode() == v1::MODE_SHADOW) absl::StrAppend(&state, " (shadow)");
    rows.push_back({l->policy_id(), LimitName(*l), l->scope(),
                    Amount(l->metric(), l->used() + l->outstanding()),
                    Amount(l->metric(), l->limit()), absl::StrFormat("%.1f%%", 100 * burn(*l)),
                    state});
  }
  PrintRows(*out_, rows, 3, 6);
}

uint64_t Reporter::PrintFinal(absl::Duration elapsed) {
  const StatsSnapshot s = stats_->Snapshot();
  *out_ << "\n################ FINAL SUMMARY after "
        << absl::FormatDuration(absl::Trunc(elapsed, absl::Milliseconds(100)))
        << " ################";
  Print(elapsed, elapsed);
  TeamStats agents, others;
  for (const auto& [key, t] : s.teams) {
    bool agent = false;
    for (const Team& team : fleet_->teams) {
      if (team.tenant == key.first && team.team == key.second) {
        agent = team.workload == Workload::kAgent;
      }
    }
    TeamStats& sum = agent ? agents : others;
    sum.allowed += t.allowed;
    sum.denied += t.denied;
    sum.tokens_committed += t.tokens_committed;
    sum.tokens_denied += t.tokens_denied;
  }
  const TeamStats total = Sum(s);
  *out_ << "\ntotals: " << Thousands(s.reserves) << " Reserve calls (" << Thousands(total.allowed)
        << " allowed, " << Thousands(total.denied) << " denied), " << Thousands(total.committed)
        << " committed, " << Thousands(total.released) << " released (simulated failures)\n";
  *out_ << "sidecar fallbacks: " << Thousands(s.fallback_allowed + s.fallback_denied)
        << " Reserve decisions made from the policy failure mode (" << Thousands(s.fallback_allowed)
        << " allowed, " << Thousands(s.fallback_denied) << " denied), "
        << Thousands(s.commits_queued) << " commits queued for later delivery\n";
  *out_ << "report-only usage: " << Thousands(ReportedEvents(s))
        << " events accepted (durably queued) by sidecars in " << Thousands(s.report_calls)
        << " Report calls, " << Thousands(s.report_retries) << " calls retried, "
        << Thousands(s.report_events_failed) << " events given up\n";
  *out_ << "tokenmaxxing (agent) teams: " << Percent(agents.denied, agents.allowed + agents.denied)
        << " of calls denied, " << Thousands(agents.tokens_committed) << " tokens used, "
        << Thousands(agents.tokens_denied) << " tokens refused before the call\n";
  *out_ << "all other teams:            " << Percent(others.denied, others.allowed + others.denied)
        << " of calls denied, " << Thousands(others.tokens_committed) << " tokens used\n";
  out_->flush();
  return total.allowed + total.denied + s.report_calls;
}

}  // namespace tokenmeter::simulator
