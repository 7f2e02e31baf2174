#include "storage/counter_record.h"

#include <cstring>

#include "rocksdb/env.h"

namespace tokenmeter::storage {

bool CounterRecord::IsZero() const {
  for (uint64_t v : fields) {
    if (v != 0) return false;
  }
  return true;
}

bool CounterRecord::Add(const CounterRecord& other) {
  CounterRecord sum;
  for (int i = 0; i < kNumCounterFields; ++i) {
    if (__builtin_add_overflow(fields[i], other.fields[i], &sum.fields[i])) return false;
  }
  *this = sum;
  return true;
}

std::string CounterRecord::Encode() const {
  std::string out(kCounterRecordSize, '\0');
  for (int i = 0; i < kNumCounterFields; ++i) {
    uint64_t v = fields[i];
    for (int b = 0; b < 8; ++b) {
      out[i * 8 + b] = static_cast<char>(v & 0xff);
      v >>= 8;
    }
  }
  return out;
}

bool CounterRecord::Decode(std::string_view bytes, CounterRecord* out) {
  if (bytes.size() != kCounterRecordSize) return false;
  for (int i = 0; i < kNumCounterFields; ++i) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; --b) v = (v << 8) | static_cast<unsigned char>(bytes[i * 8 + b]);
    out->fields[i] = v;
  }
  return true;
}

bool CounterAddOperator::Merge(const rocksdb::Slice& key, const rocksdb::Slice* existing_value,
                               const rocksdb::Slice& value, std::string* new_value,
                               rocksdb::Logger* logger) const {
  CounterRecord sum;
  if (existing_value != nullptr && !CounterRecord::Decode(existing_value->ToStringView(), &sum)) {
    rocksdb::Log(rocksdb::InfoLogLevel::ERROR_LEVEL, logger,
                 "%s: malformed base value of %zu bytes", kName, existing_value->size());
    return false;
  }
  CounterRecord operand;
  if (!CounterRecord::Decode(value.ToStringView(), &operand)) {
    rocksdb::Log(rocksdb::InfoLogLevel::ERROR_LEVEL, logger, "%s: malformed operand of %zu bytes",
                 kName, value.size());
    return false;
  }
  if (!sum.Add(operand)) {
    rocksdb::Log(rocksdb::InfoLogLevel::ERROR_LEVEL, logger, "%s: counter overflow", kName);
    return false;
  }
  *new_value = sum.Encode();
  return true;
}

}  // namespace tokenmeter::storage
