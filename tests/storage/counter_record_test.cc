#include "storage/counter_record.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "rocksdb/slice.h"

namespace tokenmeter::storage {
namespace {

CounterRecord Record(uint64_t input, uint64_t output, uint64_t requests) {
  CounterRecord r;
  r[kInputTokens] = input;
  r[kOutputTokens] = output;
  r[kRequests] = requests;
  return r;
}

TEST(CounterRecordTest, EncodesToFixedWidthAndBack) {
  CounterRecord r = Record(1, 2, 3);
  r[kCostMicroUsd] = UINT64_MAX;
  const std::string bytes = r.Encode();
  EXPECT_EQ(bytes.size(), kCounterRecordSize);
  CounterRecord back;
  ASSERT_TRUE(CounterRecord::Decode(bytes, &back));
  EXPECT_EQ(back, r);
}

TEST(CounterRecordTest, DecodeRefusesWrongSizes) {
  CounterRecord out;
  EXPECT_FALSE(CounterRecord::Decode("", &out));
  EXPECT_FALSE(CounterRecord::Decode(std::string(kCounterRecordSize - 1, '\0'), &out));
  EXPECT_FALSE(CounterRecord::Decode(std::string(kCounterRecordSize + 8, '\0'), &out));
}

TEST(CounterRecordTest, AddDetectsOverflowAndLeavesValueUnchanged) {
  CounterRecord a = Record(UINT64_MAX - 1, 5, 1);
  EXPECT_TRUE(a.Add(Record(1, 1, 1)));
  EXPECT_EQ(a[kInputTokens], UINT64_MAX);
  EXPECT_FALSE(a.Add(Record(1, 1, 1)));
  EXPECT_EQ(a, Record(UINT64_MAX, 6, 2));
}

class CounterAddOperatorTest : public ::testing::Test {
 protected:
  bool Merge(const std::string* existing, const std::string& operand, std::string* out) {
    rocksdb::Slice existing_slice;
    if (existing != nullptr) existing_slice = *existing;
    return op_.Merge("key", existing != nullptr ? &existing_slice : nullptr, operand, out, nullptr);
  }
  CounterAddOperator op_;
};

TEST_F(CounterAddOperatorTest, NameIsFrozen) {
  EXPECT_STREQ(op_.Name(), "tokenmeter.CounterAdd.v1");
}

TEST_F(CounterAddOperatorTest, AddsFieldByField) {
  const std::string base = Record(10, 20, 1).Encode();
  std::string out;
  ASSERT_TRUE(Merge(&base, Record(1, 2, 1).Encode(), &out));
  CounterRecord sum;
  ASSERT_TRUE(CounterRecord::Decode(out, &sum));
  EXPECT_EQ(sum, Record(11, 22, 2));
}

TEST_F(CounterAddOperatorTest, NoBaseMeansZero) {
  std::string out;
  ASSERT_TRUE(Merge(nullptr, Record(7, 8, 1).Encode(), &out));
  EXPECT_EQ(out, Record(7, 8, 1).Encode());
}

TEST_F(CounterAddOperatorTest, FailsLoudlyOnMalformedOperand) {
  const std::string base = Record(10, 20, 1).Encode();
  std::string out;
  EXPECT_FALSE(Merge(&base, "garbage", &out));
  EXPECT_FALSE(Merge(&base, std::string(8, '\x01'), &out));  // A bundled uint64add operand.
}

TEST_F(CounterAddOperatorTest, FailsLoudlyOnMalformedBase) {
  const std::string base = "not a record";
  std::string out;
  EXPECT_FALSE(Merge(&base, Record(1, 1, 1).Encode(), &out));
}

TEST_F(CounterAddOperatorTest, FailsOnOverflow) {
  const std::string base = Record(UINT64_MAX, 0, 0).Encode();
  std::string out;
  EXPECT_FALSE(Merge(&base, Record(1, 0, 0).Encode(), &out));
}

}  // namespace
}  // namespace tokenmeter::storage
