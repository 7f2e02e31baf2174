#include "services/common/shard_router.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "services/common/sharding.h"

namespace tokenmeter::common {

absl::StatusOr<std::vector<std::string>> ParseShardAddresses(std::string_view list) {
  std::vector<std::string> addresses;
  if (absl::StripAsciiWhitespace(absl::string_view(list.data(), list.size())).empty()) {
    return absl::InvalidArgumentError("shard address list is empty");
  }
  for (absl::string_view entry : absl::StrSplit(absl::string_view(list.data(), list.size()), ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    const std::string index = absl::StrCat("shard ", addresses.size());
    if (entry.empty()) return absl::InvalidArgumentError(absl::StrCat(index, ": empty address"));
    const size_t colon = entry.rfind(':');
    uint32_t port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(entry.substr(colon + 1), &port) || port == 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(index, ": \"", std::string(entry), "\" is not host:port"));
    }
    addresses.emplace_back(entry);
  }
  return addresses;
}

absl::StatusOr<std::unique_ptr<ShardRouter>> ShardRouter::Create(std::string_view address_list,
                                                                 int max_message_bytes) {
  absl::StatusOr<std::vector<std::string>> addresses = ParseShardAddresses(address_list);
  if (!addresses.ok()) return addresses.status();
  std::unique_ptr<ShardRouter> router(new ShardRouter());
  router->addresses_ = *std::move(addresses);
  for (const std::string& address : router->addresses_) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(max_message_bytes);
    // Reconnect quickly after a shard restart (the default backoff grows to 120 s).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    router->channels_.push_back(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  return router;
}

int ShardRouter::OwnerOf(std::string_view tenant) const {
  return OwnerShard(tenant, shard_count());
}

}  // namespace tokenmeter::common
