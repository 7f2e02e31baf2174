// Retention: compaction filters that drop state past its time to live, per column family.
// Thread-safe: filters are stateless apart from the injected clock.
#ifndef TOKENMETER_STORAGE_RETENTION_H_
#define TOKENMETER_STORAGE_RETENTION_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "rocksdb/compaction_filter.h"
#include "storage/store.h"

namespace tokenmeter::storage {

// Values of the dedup and reservation families start with a big-endian expiry in unix seconds
// (0 = never). Returns nullopt if the value is too short.
std::string EncodeExpiry(absl::Time expires_at);  // absl::InfiniteFuture() encodes as 0.
std::optional<absl::Time> DecodeExpiry(std::string_view value);

// Returns the compaction filter factory for `cf`, or nullptr if that family keeps everything.
std::shared_ptr<rocksdb::CompactionFilterFactory> MakeRetentionFilterFactory(
    Cf cf, const RetentionOptions& retention, std::function<absl::Time()> now);

}  // namespace tokenmeter::storage

#endif  // TOKENMETER_STORAGE_RETENTION_H_
