#include "services/common/sharding.h"

#include <array>
#include <string>

#include "gtest/gtest.h"

namespace tokenmeter::common {
namespace {

TEST(ShardingTest, HashIsStableAcrossBuilds) {
  // Frozen values: every component (and other languages) must route identically.
  // A change here moves tenants between shards: it needs a resharding plan, not a test edit.
  EXPECT_EQ(Hash64(""), 0xefd01f60ba992926ULL);
  EXPECT_EQ(Hash64("acme"), 0x3a25b6656ba9cfc6ULL);
  EXPECT_EQ(Hash64("tokenmeter"), 0xfeabd8d2d5107ec7ULL);
  EXPECT_EQ(OwnerShard("acme", 1), 0);
  EXPECT_EQ(OwnerShard("acme", 3), 2);
  EXPECT_EQ(OwnerShard("globex", 3), 0);
  EXPECT_EQ(OwnerShard("initech", 3), 1);
}

TEST(ShardingTest, JumpHashStaysInRangeAndIsFrozen) {
  EXPECT_EQ(JumpConsistentHash(0, 1), 0);
  EXPECT_EQ(JumpConsistentHash(1, 10), 6);
  EXPECT_EQ(JumpConsistentHash(0xdeadbeef, 1000), 285);
  EXPECT_EQ(JumpConsistentHash(42, 7), 2);
  for (uint64_t key : {0ULL, 1ULL, 42ULL, 0xdeadbeefULL, ~0ULL}) {
    for (int32_t n = 1; n < 64; ++n) {
      const int32_t b = JumpConsistentHash(key, n);
      ASSERT_GE(b, 0);
      ASSERT_LT(b, n);
    }
  }
}

TEST(ShardingTest, GrowingTheClusterMovesOnlyTenantsToTheNewShard) {
  int moved = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::string tenant = "tenant-" + std::to_string(i);
    const int32_t before = OwnerShard(tenant, 4);
    const int32_t after = OwnerShard(tenant, 5);
    if (before != after) {
      EXPECT_EQ(after, 4) << tenant;  // Consistent: a tenant moves only to the new shard.
      ++moved;
    }
  }
  EXPECT_GT(moved, 10000 / 5 - 400);  // About 1/5 of the tenants move.
  EXPECT_LT(moved, 10000 / 5 + 400);
}

TEST(ShardingTest, TenantsSpreadEvenly) {
  std::array<int, 3> counts{};
  for (int i = 0; i < 30000; ++i) ++counts[OwnerShard("t" + std::to_string(i), 3)];
  for (int c : counts) {
    EXPECT_GT(c, 9500);
    EXPECT_LT(c, 10500);
  }
}

}  // namespace
}  // namespace tokenmeter::common
