#include "services/sidecar/shard_channels.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/common/sharding.h"

namespace tokenmeter::sidecar {

absl::StatusOr<std::vector<std::string>> ShardTargets(const std::string& list,
                                                      const std::string& templ, int count) {
  if (list.empty() == templ.empty()) {
    return absl::InvalidArgumentError(
        "give exactly one of --aggregators (a list) or --aggregator-template (with {i})");
  }
  std::vector<std::string> targets;
  if (!list.empty()) {
    for (absl::string_view t : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      targets.emplace_back(t);
    }
    if (count > 0 && static_cast<int>(targets.size()) != count) {
      return absl::InvalidArgumentError(absl::StrCat("--aggregators lists ", targets.size(),
                                                     " shards but --shard-count is ", count));
    }
  } else {
    if (templ.find("{i}") == std::string::npos || count < 1) {
      return absl::InvalidArgumentError(
          "--aggregator-template needs \"{i}\" and --shard-count >= 1");
    }
    for (int i = 0; i < count; ++i) {
      targets.push_back(absl::StrReplaceAll(templ, {{"{i}", absl::StrCat(i)}}));
    }
  }
  if (targets.empty()) return absl::InvalidArgumentError("no shard targets");
  return targets;
}

ShardChannels::ShardChannels(std::vector<std::string> targets) : targets_(std::move(targets)) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  for (const std::string& t : targets_) {
    channels_.push_back(grpc::CreateCustomChannel(t, grpc::InsecureChannelCredentials(), args));
  }
}

int ShardChannels::OwnerOf(const std::string& tenant) const {
  return common::OwnerShard(tenant, static_cast<int32_t>(targets_.size()));
}

}  // namespace tokenmeter::sidecar
