// What the shards counted, read through UsageService.GetUsage (scope {tenant}, day windows,
// UTC) on the tenant's owner shard, and the exact comparison with a client ledger.
//
// Ownership is learnt from the shards themselves: the owner answers GetUsage, every other
// shard refuses the tenant with FAILED_PRECONDITION. The test therefore needs no copy of the
// sharding function, and checks that exactly one shard claims each tenant.
//
// Thread-compatible: use a UsageProbe from one thread.
#ifndef TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_USAGE_H_
#define TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_USAGE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/faults/sidecar_fault_clients.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::faults {

class UsageProbe {
 public:
  // `shard_targets` in shard order, as the test's own clients reach them.
  explicit UsageProbe(const std::vector<std::string>& shard_targets);

  // The index of the shard that owns `tenant` (cached after the first answer). Unavailable if
  // a shard cannot be asked; Internal unless exactly one shard claims the tenant.
  absl::StatusOr<int> OwnerOf(const std::string& tenant);
  // The tenant's totals on its owner over every day window that can hold the test's events.
  // DataLoss if a point breaks total_tokens == input + output.
  absl::StatusOr<Totals> TenantTotals(const std::string& tenant);
  // Sum of the requests counted for every tenant of `tenants` owned by `shard`.
  absl::StatusOr<uint64_t> ShardRequests(const std::vector<std::string>& tenants, int shard);

 private:
  absl::StatusOr<Totals> Query(int shard, const std::string& tenant);
  absl::StatusOr<Totals> QueryOnce(int shard, const std::string& tenant);

  std::vector<std::unique_ptr<v1::UsageService::Stub>> stubs_;
  std::map<std::string, int> owners_;
};

// Polls until every tenant's totals equal `expected` exactly, then checks they stay equal for
// `settle` (a late resend counted twice would show there). DataLoss as soon as any tenant's
// count exceeds the ledger (counted twice); DeadlineExceeded with every tenant's difference
// after `timeout` (lost events). On success *waited is the time until the first match.
absl::Status WaitForExactTotals(UsageProbe* probe, const std::map<std::string, Totals>& expected,
                                absl::Duration timeout, absl::Duration settle,
                                absl::Duration* waited = nullptr);

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_USAGE_H_
