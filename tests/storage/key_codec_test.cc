#include "storage/key_codec.h"

#include <string>

#include "gtest/gtest.h"

namespace tokenmeter::storage {
namespace {

TEST(KeyCodecTest, CounterKeyRoundTrips) {
  const ScopeKey scope{"acme", "research", "bob", "key-1", "gpt-4o"};
  const std::string key = CounterKey(scope, Granularity::kDay, 1'764'460'800);
  const auto decoded = DecodeCounterKey(key);
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->scope, scope);
  EXPECT_EQ(decoded->granularity, Granularity::kDay);
  EXPECT_EQ(decoded->window_start, 1'764'460'800);
}

TEST(KeyCodecTest, WindowsOfOneSeriesSortInTimeOrder) {
  const ScopeKey scope{"acme", "research", "", "", ""};
  // 255 and 256 differ in their low byte order: little-endian would sort them wrongly.
  EXPECT_LT(CounterKey(scope, Granularity::kTenSeconds, 255),
            CounterKey(scope, Granularity::kTenSeconds, 256));
  EXPECT_LT(CounterKey(scope, Granularity::kTenSeconds, 10),
            CounterKey(scope, Granularity::kTenSeconds, 1'000'000'000));
}

TEST(KeyCodecTest, KeysOfATenantShareItsPrefixAndNoOtherTenantsDo) {
  const std::string prefix = TenantPrefix("acme");
  EXPECT_TRUE(CounterKey({"acme", "t", "", "", ""}, Granularity::kHour, 0).starts_with(prefix));
  EXPECT_TRUE(DedupKey("acme", "e1").starts_with(prefix));
  EXPECT_TRUE(ReservationKey("acme", "r1").starts_with(prefix));
  EXPECT_TRUE(PolicyKey("acme", "p1").starts_with(prefix));
  // "acme2" must not fall inside acme's range: the length prefix separates them.
  EXPECT_FALSE(CounterKey({"acme2", "", "", "", ""}, Granularity::kHour, 0).starts_with(prefix));
}

TEST(KeyCodecTest, LevelPrefixSelectsOneLevelWithOrWithoutModel) {
  const std::string teams = CounterLevelPrefix("acme", Level::kTeam, false);
  EXPECT_TRUE(CounterKey({"acme", "t", "", "", ""}, Granularity::kDay, 0).starts_with(teams));
  EXPECT_FALSE(CounterKey({"acme", "t", "u", "", ""}, Granularity::kDay, 0).starts_with(teams));
  EXPECT_FALSE(CounterKey({"acme", "t", "", "", "m"}, Granularity::kDay, 0).starts_with(teams));
  const std::string models = CounterLevelPrefix("acme", Level::kTenant, true);
  EXPECT_TRUE(CounterKey({"acme", "", "", "", "m"}, Granularity::kDay, 0).starts_with(models));
  EXPECT_FALSE(CounterKey({"acme", "", "", "", ""}, Granularity::kDay, 0).starts_with(models));
}

TEST(KeyCodecTest, ComponentsCannotBleedIntoEachOther) {
  // Without length prefixes, team "ab" + user "c" and team "a" + user "bc" would collide.
  EXPECT_NE(CounterKey({"t", "ab", "c", "", ""}, Granularity::kDay, 0),
            CounterKey({"t", "a", "bc", "", ""}, Granularity::kDay, 0));
}

TEST(KeyCodecTest, MalformedCounterKeysAreRejected) {
  const std::string key = CounterKey({"acme", "t", "u", "", ""}, Granularity::kDay, 42);
  EXPECT_FALSE(DecodeCounterKey(key.substr(0, key.size() - 1)).has_value());
  EXPECT_FALSE(DecodeCounterKey(key + "x").has_value());
  EXPECT_FALSE(DecodeCounterKey("").has_value());
  std::string bad_granularity = key;
  bad_granularity[bad_granularity.size() - 9] = 9;
  EXPECT_FALSE(DecodeCounterKey(bad_granularity).has_value());
  std::string bad_level = key;
  bad_level[5] = static_cast<char>(Level::kTenant);  // Says tenant level but carries a team.
  EXPECT_FALSE(DecodeCounterKey(bad_level).has_value());
}

TEST(KeyCodecTest, DeadLetterKeysSortByTimeAndDecode) {
  EXPECT_LT(DeadLetterKey(1000, 5), DeadLetterKey(1001, 0));
  EXPECT_EQ(DeadLetterTime(DeadLetterKey(123456, 7)), 123456);
  EXPECT_FALSE(DeadLetterTime("short").has_value());
}

TEST(KeyCodecTest, ScopeRendersReadably) {
  EXPECT_EQ(ScopeToString({"acme", "research", "bob", "", "gpt-4o"}),
            "tenant=acme/team=research/user=bob/model=gpt-4o");
  EXPECT_EQ(ScopeToString({"acme", "", "", "", ""}), "tenant=acme");
}

}  // namespace
}  // namespace tokenmeter::storage
