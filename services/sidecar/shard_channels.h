// The sidecar's view of the cluster: one gRPC channel per shard, created once and reused,
// with HTTP/2 keepalive so a silently dropped network is noticed within seconds.
//
// Targets come from a static list (--aggregators a:7400,b:7400,...) or from a DNS template for
// StatefulSet pods ("tokenmeter-{i}.tokenmeter-headless.ns.svc:7400" with --shard-count N).
// Thread-safe after construction.
#ifndef TOKENMETER_SERVICES_SIDECAR_SHARD_CHANNELS_H_
#define TOKENMETER_SERVICES_SIDECAR_SHARD_CHANNELS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace tokenmeter::sidecar {

// Expands the shard targets: either `list` (comma-separated, index = shard) or `templ` with
// "{i}" replaced by 0..count-1. Exactly one of them must be given; InvalidArgument otherwise.
absl::StatusOr<std::vector<std::string>> ShardTargets(const std::string& list,
                                                      const std::string& templ, int count);

class ShardChannels {
 public:
  explicit ShardChannels(std::vector<std::string> targets);

  int size() const { return static_cast<int>(targets_.size()); }
  const std::string& target(int shard) const { return targets_[shard]; }
  const std::shared_ptr<grpc::Channel>& channel(int shard) const { return channels_[shard]; }
  // The channel of the shard that owns `tenant`, and that shard's index.
  int OwnerOf(const std::string& tenant) const;

 private:
  std::vector<std::string> targets_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_SHARD_CHANNELS_H_
