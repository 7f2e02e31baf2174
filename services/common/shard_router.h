// Client-side routing to the aggregator shards: one gRPC channel per shard address, created
// once and reused for every call, and the owner lookup (common::OwnerShard) that picks the
// shard of a tenant. Used by tokenmeterctl and the fleet simulator.
//
// Thread-safety: immutable after Create(); every method may be called from any thread.
#ifndef TOKENMETER_SERVICES_COMMON_SHARD_ROUTER_H_
#define TOKENMETER_SERVICES_COMMON_SHARD_ROUTER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace tokenmeter::common {

// Splits "host:port,host:port,..." into addresses; index i is shard i. Whitespace around
// entries is ignored. Returns InvalidArgument if the list is empty, an entry is empty, or an
// entry has no ":port" with a port in 1..65535.
absl::StatusOr<std::vector<std::string>> ParseShardAddresses(std::string_view list);

class ShardRouter {
 public:
  // Creates one insecure channel per address (shard index = position in the list). Channels
  // connect lazily, so this succeeds whether or not the shards are up. `max_message_bytes`
  // bounds received messages. Returns InvalidArgument for a malformed list.
  static absl::StatusOr<std::unique_ptr<ShardRouter>> Create(std::string_view address_list,
                                                             int max_message_bytes = 16 << 20);

  int shard_count() const { return static_cast<int>(addresses_.size()); }
  // Index of the shard that owns `tenant`.
  int OwnerOf(std::string_view tenant) const;
  // Requires 0 <= shard < shard_count().
  const std::string& address(int shard) const { return addresses_[shard]; }
  const std::shared_ptr<grpc::Channel>& channel(int shard) const { return channels_[shard]; }
  // The channel of the tenant's owner shard.
  const std::shared_ptr<grpc::Channel>& ChannelFor(std::string_view tenant) const {
    return channels_[OwnerOf(tenant)];
  }

 private:
  ShardRouter() = default;

  std::vector<std::string> addresses_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
};

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_SHARD_ROUTER_H_
