// The value of a counter key: a fixed-width record of every metric counted for one scope and
// window, and the RocksDB merge operator that adds records.
//
// Why one record instead of one key per metric: an event touches ~6 scopes x ~4 granularities
// per time zone; one key per metric would multiply that by 7. Each field is still a plain
// fixed-width integer add.
//
// Encoding: kNumCounterFields little-endian uint64 (56 bytes), in CounterField order. The merge
// operator refuses (returns false, so RocksDB reports Corruption) any operand or base value of
// another size, and any sum that overflows uint64 — unlike RocksDB's bundled uint64add, which
// treats a malformed value as 0. Its Name() is part of the on-disk format and never changes.
#ifndef TOKENMETER_STORAGE_COUNTER_RECORD_H_
#define TOKENMETER_STORAGE_COUNTER_RECORD_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "rocksdb/merge_operator.h"

namespace tokenmeter::storage {

// Field order is part of the on-disk format: append only.
enum CounterField : int {
  kInputTokens = 0,
  kCachedInputTokens = 1,
  kOutputTokens = 2,
  kReasoningTokens = 3,
  kRequests = 4,
  kCostMicroUsd = 5,
  kUnpricedRequests = 6,
  kNumCounterFields = 7,
};

inline constexpr size_t kCounterRecordSize = kNumCounterFields * sizeof(uint64_t);

struct CounterRecord {
  std::array<uint64_t, kNumCounterFields> fields{};

  uint64_t& operator[](CounterField f) { return fields[f]; }
  uint64_t operator[](CounterField f) const { return fields[f]; }
  bool IsZero() const;

  // Adds `other` field by field. Returns false (leaving *this unchanged) on overflow.
  bool Add(const CounterRecord& other);

  std::string Encode() const;
  // Returns false if `bytes` is not exactly kCounterRecordSize long.
  static bool Decode(std::string_view bytes, CounterRecord* out);

  friend bool operator==(const CounterRecord&, const CounterRecord&) = default;
};

// The fail-loud add merge operator for counter records. Thread-safe (stateless).
class CounterAddOperator : public rocksdb::AssociativeMergeOperator {
 public:
  // Frozen: RocksDB refuses to open a database whose merge operator name changed.
  static constexpr const char* kName = "tokenmeter.CounterAdd.v1";

  bool Merge(const rocksdb::Slice& key, const rocksdb::Slice* existing_value,
             const rocksdb::Slice& value, std::string* new_value,
             rocksdb::Logger* logger) const override;
  const char* Name() const override { return kName; }
};

}  // namespace tokenmeter::storage

#endif  // TOKENMETER_STORAGE_COUNTER_RECORD_H_
