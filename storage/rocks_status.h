// The storage edge of error handling: RocksDB statuses become absl::Status exactly here.
#ifndef TOKENMETER_STORAGE_ROCKS_STATUS_H_
#define TOKENMETER_STORAGE_ROCKS_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace tokenmeter::storage {

// Maps a RocksDB status to the most specific canonical code, prefixing `what`:
// Corruption -> DataLoss, NoSpace / space limit -> ResourceExhausted, Busy / TryAgain /
// TimedOut / IOError -> Unavailable, InvalidArgument -> InvalidArgument, NotFound -> NotFound,
// anything else -> Internal.
absl::Status FromRocksStatus(const rocksdb::Status& status, std::string_view what);

}  // namespace tokenmeter::storage

#endif  // TOKENMETER_STORAGE_ROCKS_STATUS_H_
