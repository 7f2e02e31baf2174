#include "services/common/shard_router.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/sharding.h"

namespace tokenmeter::common {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ShardRouterTest, ParsesAddressListInShardOrderIgnoringSpaces) {
  absl::StatusOr<std::vector<std::string>> a =
      ParseShardAddresses(" 127.0.0.1:7401, localhost:7402 ,[::1]:7403");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(*a, ElementsAre("127.0.0.1:7401", "localhost:7402", "[::1]:7403"));
}

TEST(ShardRouterTest, RejectsMalformedListsNamingTheShard) {
  EXPECT_THAT(ParseShardAddresses("").status().message(), HasSubstr("empty"));
  EXPECT_THAT(ParseShardAddresses("  ").status().message(), HasSubstr("empty"));
  EXPECT_THAT(ParseShardAddresses("a:1,,b:2").status().message(), HasSubstr("shard 1"));
  EXPECT_THAT(ParseShardAddresses("a:1,b").status().message(), HasSubstr("shard 1"));
  EXPECT_THAT(ParseShardAddresses("a:0").status().message(), HasSubstr("not host:port"));
  EXPECT_THAT(ParseShardAddresses("a:65536").status().message(), HasSubstr("not host:port"));
  EXPECT_THAT(ParseShardAddresses(":7401").status().message(), HasSubstr("not host:port"));
  EXPECT_EQ(ParseShardAddresses("a:x").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardRouterTest, RoutesEveryTenantToItsOwnerShardsChannel) {
  absl::StatusOr<std::unique_ptr<ShardRouter>> router =
      ShardRouter::Create("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
  ASSERT_TRUE(router.ok()) << router.status();
  const ShardRouter& r = **router;
  ASSERT_EQ(r.shard_count(), 3);
  EXPECT_EQ(r.address(2), "127.0.0.1:3");
  for (const char* tenant : {"acme", "globex", "initech", "umbrella"}) {
    EXPECT_EQ(r.OwnerOf(tenant), OwnerShard(tenant, 3)) << tenant;
    EXPECT_EQ(r.ChannelFor(tenant), r.channel(OwnerShard(tenant, 3))) << tenant;
  }
  // One channel per shard, reused: distinct objects, stable across calls.
  EXPECT_NE(r.channel(0), r.channel(1));
  EXPECT_EQ(r.channel(0), r.channel(0));
}

TEST(ShardRouterTest, CreateFailsOnAMalformedList) {
  EXPECT_EQ(ShardRouter::Create("nope").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tokenmeter::common
