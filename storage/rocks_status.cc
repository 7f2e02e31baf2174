#include "storage/rocks_status.h"

#include "absl/strings/str_cat.h"

namespace tokenmeter::storage {

absl::Status FromRocksStatus(const rocksdb::Status& status, std::string_view what) {
  if (status.ok()) return absl::OkStatus();
  const std::string message = std::string(what) + ": " + status.ToString();
  if (status.IsCorruption()) return absl::DataLossError(message);
  if (status.IsNoSpace() || status.subcode() == rocksdb::Status::kSpaceLimit) {
    return absl::ResourceExhaustedError(message);
  }
  if (status.IsBusy() || status.IsTryAgain() || status.IsTimedOut() || status.IsIOError() ||
      status.IsIncomplete()) {
    return absl::UnavailableError(message);
  }
  if (status.IsInvalidArgument()) return absl::InvalidArgumentError(message);
  if (status.IsNotFound()) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

}  // namespace tokenmeter::storage
