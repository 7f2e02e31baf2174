#include "tests/faults/sidecar_fault_usage.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

namespace tokenmeter::faults {
namespace {

constexpr absl::Duration kRpcTimeout = absl::Seconds(10);
constexpr absl::Duration kPollPause = absl::Milliseconds(200);
constexpr int kAttempts = 5;
constexpr absl::Duration kRetryPause = absl::Milliseconds(100);

// Per-field "a > b" for any field: a count above the ledger can never come down again.
bool Exceeds(const Totals& counted, const Totals& expected) {
  return counted.requests > expected.requests || counted.input > expected.input ||
         counted.cached_input > expected.cached_input || counted.output > expected.output ||
         counted.reasoning > expected.reasoning;
}

}  // namespace

UsageProbe::UsageProbe(const std::vector<std::string>& shard_targets) {
  grpc::ChannelArguments args;
  // Shards restart during the tests: reconnect within a second (gRPC's default grows to 120 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  for (const std::string& target : shard_targets) {
    stubs_.push_back(v1::UsageService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
}

absl::StatusOr<Totals> UsageProbe::Query(int shard, const std::string& tenant) {
  absl::StatusOr<Totals> totals;
  // A shard just restarted may fail a call on its old, dead connection ("Socket closed"):
  // transport errors are retried a few times.
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    totals = QueryOnce(shard, tenant);
    if (totals.ok() || !absl::IsUnavailable(totals.status())) break;
    absl::SleepFor(kRetryPause);
  }
  return totals;
}

absl::StatusOr<Totals> UsageProbe::QueryOnce(int shard, const std::string& tenant) {
  v1::GetUsageRequest request;
  request.mutable_scope()->set_tenant(tenant);
  request.set_granularity(v1::GRANULARITY_DAY);
  request.set_time_zone("UTC");
  const absl::Time now = absl::Now();
  request.mutable_from()->set_seconds(absl::ToUnixSeconds(now - absl::Hours(48)));
  request.mutable_to()->set_seconds(absl::ToUnixSeconds(now + absl::Hours(24)));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(now + kRpcTimeout));
  context.set_wait_for_ready(true);  // A shard restarting is waited for, up to the deadline.
  v1::GetUsageResponse response;
  const grpc::Status status = stubs_[shard]->GetUsage(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(
        static_cast<absl::StatusCode>(status.error_code()),
        absl::StrCat("GetUsage(", tenant, ") on shard ", shard, ": ", status.error_message()));
  }
  Totals sums;
  for (const v1::UsagePoint& p : response.points()) {
    const v1::UsageTotals& t = p.totals();
    if (t.total_tokens() != t.input_tokens() + t.output_tokens()) {
      return absl::DataLossError(absl::StrCat(tenant, ": total_tokens != input + output"));
    }
    sums.input += t.input_tokens();
    sums.cached_input += t.cached_input_tokens();
    sums.output += t.output_tokens();
    sums.reasoning += t.reasoning_tokens();
    sums.requests += t.requests();
  }
  return sums;
}

absl::StatusOr<int> UsageProbe::OwnerOf(const std::string& tenant) {
  if (auto it = owners_.find(tenant); it != owners_.end()) return it->second;
  int owner = -1;
  for (int shard = 0; shard < static_cast<int>(stubs_.size()); ++shard) {
    absl::StatusOr<Totals> answer = Query(shard, tenant);
    if (answer.ok()) {
      if (owner >= 0) {
        return absl::InternalError(
            absl::StrCat("shards ", owner, " and ", shard, " both claim tenant ", tenant));
      }
      owner = shard;
    } else if (!absl::IsFailedPrecondition(answer.status()) ||
               !absl::StrContains(answer.status().message(), "is owned by shard")) {
      return answer.status();
    }
  }
  if (owner < 0) return absl::InternalError(absl::StrCat("no shard claims tenant ", tenant));
  owners_[tenant] = owner;
  return owner;
}

absl::StatusOr<Totals> UsageProbe::TenantTotals(const std::string& tenant) {
  absl::StatusOr<int> owner = OwnerOf(tenant);
  if (!owner.ok()) return owner.status();
  return Query(*owner, tenant);
}

absl::StatusOr<uint64_t> UsageProbe::ShardRequests(const std::vector<std::string>& tenants,
                                                   int shard) {
  uint64_t requests = 0;
  for (const std::string& tenant : tenants) {
    absl::StatusOr<int> owner = OwnerOf(tenant);
    if (!owner.ok()) return owner.status();
    if (*owner != shard) continue;
    absl::StatusOr<Totals> totals = Query(shard, tenant);
    if (!totals.ok()) return totals.status();
    requests += totals->requests;
  }
  return requests;
}

namespace {

// Compares every tenant once: OK if all equal, DataLoss on an over-count, Unavailable (with
// the differences) if some are still behind or a shard did not answer.
absl::Status CompareOnce(UsageProbe* probe, const std::map<std::string, Totals>& expected) {
  std::string behind;
  for (const auto& [tenant, want] : expected) {
    absl::StatusOr<Totals> counted = probe->TenantTotals(tenant);
    if (!counted.ok()) {
      if (absl::IsDataLoss(counted.status())) return counted.status();
      return absl::UnavailableError(std::string(counted.status().message()));
    }
    if (*counted == want) continue;
    const std::string diff =
        absl::StrCat("tenant ", tenant, " (shard ", *probe->OwnerOf(tenant), "): counted ",
                     Render(*counted), "; acknowledged ", Render(want), "\n");
    if (Exceeds(*counted, want)) return absl::DataLossError(absl::StrCat("COUNTED TWICE: ", diff));
    absl::StrAppend(&behind, diff);
  }
  if (behind.empty()) return absl::OkStatus();
  return absl::UnavailableError(behind);
}

}  // namespace

absl::Status WaitForExactTotals(UsageProbe* probe, const std::map<std::string, Totals>& expected,
                                absl::Duration timeout, absl::Duration settle,
                                absl::Duration* waited) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  absl::Status last;
  for (;;) {  // Bounded by the deadline.
    last = CompareOnce(probe, expected);
    if (last.ok() || absl::IsDataLoss(last) || absl::Now() >= deadline) break;
    absl::SleepFor(kPollPause);
  }
  if (absl::IsDataLoss(last)) return last;
  if (!last.ok()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "shard totals did not reach the acknowledged ledger within ", absl::FormatDuration(timeout),
        " (EVENTS LOST or stuck backlog):\n", last.message()));
  }
  if (waited != nullptr) *waited = absl::Now() - start;
  const absl::Time settled = absl::Now() + settle;
  while (absl::Now() < settled) {  // The totals must hold still.
    absl::SleepFor(kPollPause);
    if (absl::Status s = CompareOnce(probe, expected); !s.ok()) {
      return absl::DataLossError(
          absl::StrCat("totals changed after matching the ledger: ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace tokenmeter::faults
