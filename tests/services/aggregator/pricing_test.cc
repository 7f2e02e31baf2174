#include "services/aggregator/pricing.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tokenmeter::aggregator {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

ModelPrice Price(std::string provider, std::string model, uint64_t input, uint64_t cached,
                 uint64_t output) {
  return ModelPrice{std::move(provider), std::move(model), input, cached, output};
}

// gpt-4o: $2.50 input, $1.25 cached input, $10 output per Mtok.
ModelPrice Gpt4o() { return Price("openai", "gpt-4o", 2'500'000, 1'250'000, 10'000'000); }

TEST(PriceTableTest, CreateKeepsVersionAndPricesInOrder) {
  absl::StatusOr<PriceTable> table = PriceTable::Create(
      7, {Gpt4o(), Price("anthropic", "claude", 3'000'000, 300'000, 15'000'000)});
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->version(), 7u);
  ASSERT_EQ(table->prices().size(), 2u);
  EXPECT_EQ(table->prices()[0].model, "gpt-4o");
  EXPECT_EQ(table->prices()[1].model, "claude");
}

TEST(PriceTableTest, FindReturnsTheEntryOrNull) {
  absl::StatusOr<PriceTable> table =
      PriceTable::Create(1, {Gpt4o(), Price("openai", "gpt-4o-mini", 150'000, 75'000, 600'000)});
  ASSERT_TRUE(table.ok()) << table.status();
  const ModelPrice* mini = table->Find("openai", "gpt-4o-mini");
  ASSERT_NE(mini, nullptr);
  EXPECT_EQ(mini->input_per_mtok, 150'000u);
  EXPECT_EQ(table->Find("openai", "gpt-4o")->output_per_mtok, 10'000'000u);
  EXPECT_EQ(table->Find("openai", "gpt-5"), nullptr);
  EXPECT_EQ(table->Find("azure", "gpt-4o"), nullptr);
  EXPECT_EQ(table->Find("openaigpt-4o", ""), nullptr);
  EXPECT_EQ(PriceTable().Find("openai", "gpt-4o"), nullptr);
}

TEST(PriceTableTest, CreateRejectsDuplicates) {
  absl::StatusOr<PriceTable> table = PriceTable::Create(1, {Gpt4o(), Gpt4o()});
  EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(table.status().message(), HasSubstr("openai/gpt-4o"));
}

TEST(PriceTableTest, CreateRejectsEmptyOrNulNames) {
  for (const ModelPrice& bad : {Price("", "gpt-4o", 1, 1, 1), Price("openai", "", 1, 1, 1),
                                Price(std::string("open\0ai", 7), "gpt-4o", 1, 1, 1)}) {
    EXPECT_EQ(PriceTable::Create(1, {bad}).status().code(), absl::StatusCode::kInvalidArgument)
        << bad.provider << "/" << bad.model;
  }
}

TEST(PriceTableTest, CreateRejectsPricesAboveOneMillionUsdPerMtok) {
  constexpr uint64_t kMax = 1'000'000'000'000;
  EXPECT_TRUE(PriceTable::Create(1, {Price("p", "m", kMax, kMax, kMax)}).ok());
  for (const ModelPrice& bad : {Price("p", "m", kMax + 1, 0, 0), Price("p", "m", 0, kMax + 1, 0),
                                Price("p", "m", 0, 0, kMax + 1)}) {
    absl::StatusOr<PriceTable> table = PriceTable::Create(1, {bad});
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(table.status().message(), HasSubstr("p/m"));
  }
}

TEST(CostMicroUsdTest, ChargesUncachedCachedAndOutputTokens) {
  // (800 * 2.5 + 200 * 1.25 + 500 * 10) micro-USD = 2000 + 250 + 5000.
  absl::StatusOr<uint64_t> cost =
      CostMicroUsd(Gpt4o(), TokenCounts{.input = 1000, .cached_input = 200, .output = 500});
  ASSERT_TRUE(cost.ok()) << cost.status();
  EXPECT_EQ(*cost, 7250u);
}

TEST(CostMicroUsdTest, ReasoningIsBilledOnlyAsPartOfOutput) {
  EXPECT_EQ(*CostMicroUsd(Gpt4o(), TokenCounts{.output = 100, .reasoning = 80}), 1000u);
}

TEST(CostMicroUsdTest, RoundsUpToAWholeMicroUsd) {
  EXPECT_EQ(*CostMicroUsd(Gpt4o(), TokenCounts{}), 0u);
  EXPECT_EQ(*CostMicroUsd(Gpt4o(), TokenCounts{.input = 1}), 3u);  // 2.5
  EXPECT_EQ(*CostMicroUsd(Gpt4o(), TokenCounts{.input = 2}), 5u);  // exact
  // Fractions of separate token types add up before rounding: 2.5 + 1.25 + 0.25 = 4.
  const ModelPrice price = Price("p", "m", 2'500'000, 1'250'000, 250'000);
  EXPECT_EQ(*CostMicroUsd(price, TokenCounts{.input = 2, .cached_input = 1, .output = 1}), 4u);
  EXPECT_EQ(*CostMicroUsd(Price("p", "m", 1, 0, 0), TokenCounts{.input = 1}), 1u);
}

TEST(CostMicroUsdTest, RejectsMoreCachedThanInputTokens) {
  EXPECT_EQ(CostMicroUsd(Gpt4o(), TokenCounts{.input = 10, .cached_input = 11}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CostMicroUsdTest, LargestRepresentableCostIsExact) {
  // $1 per Mtok is one micro-USD per token.
  EXPECT_EQ(*CostMicroUsd(Price("p", "m", 0, 0, 1'000'000), TokenCounts{.output = kMaxU64}),
            kMaxU64);
}

TEST(CostMicroUsdTest, OverflowIsOutOfRange) {
  const ModelPrice dollar = Price("p", "m", 1, 0, 1'000'000);
  EXPECT_EQ(CostMicroUsd(dollar, TokenCounts{.input = 1, .output = kMaxU64}).status().code(),
            absl::StatusCode::kOutOfRange);
  const ModelPrice max = Price("p", "m", kMaxU64, kMaxU64, kMaxU64);
  const TokenCounts all{.input = kMaxU64, .cached_input = 1, .output = kMaxU64};
  EXPECT_EQ(CostMicroUsd(max, all).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(ParseUsdToMicrosTest, ParsesExactDecimals) {
  const struct {
    const char* usd;
    uint64_t micros;
  } kCases[] = {
      {"0", 0},
      {"15", 15'000'000},
      {"2.5", 2'500'000},
      {"0.075", 75'000},
      {"1.25", 1'250'000},
      {"0.000001", 1},
      {"007.50", 7'500'000},
      {"18446744073709.551615", kMaxU64},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<uint64_t> micros = ParseUsdToMicros(c.usd);
    ASSERT_TRUE(micros.ok()) << c.usd << ": " << micros.status();
    EXPECT_EQ(*micros, c.micros) << c.usd;
  }
}

TEST(ParseUsdToMicrosTest, RejectsAnythingElse) {
  for (const char* bad :
       {"", "-1", "+1", "1e3", "1.2345678", "abc", ".5", "5.", "1.2.3", " 1", "1 ", "$1", "1,5",
        "18446744073709.551616", "18446744073710", "99999999999999999999999"}) {
    EXPECT_EQ(ParseUsdToMicros(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace tokenmeter::aggregator
