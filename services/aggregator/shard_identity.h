// Which tenants this shard owns. A value; thread-safe.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_SHARD_IDENTITY_H_
#define TOKENMETER_SERVICES_AGGREGATOR_SHARD_IDENTITY_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "services/common/sharding.h"

namespace tokenmeter::aggregator {

struct ShardIdentity {
  int32_t index = 0;
  int32_t count = 1;

  // Returns OK if this shard owns `tenant`, else FailedPrecondition naming the owner:
  // "tenant \"acme\" is owned by shard 2 of 3, not shard 0".
  absl::Status CheckOwner(std::string_view tenant) const {
    const int32_t owner = common::OwnerShard(tenant, count);
    if (owner == index) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrFormat("tenant \"%s\" is owned by shard %d of %d, not shard %d",
                        std::string(tenant), owner, count, index));
  }
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_SHARD_IDENTITY_H_
