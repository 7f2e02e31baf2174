// Validation of untrusted identifiers at the edge: length bounds and charsets. Every error is
// InvalidArgument naming the field, so callers can pass it straight to the client.
// Pure functions; thread-safe.
#ifndef TOKENMETER_SERVICES_COMMON_VALIDATION_H_
#define TOKENMETER_SERVICES_COMMON_VALIDATION_H_

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"

namespace tokenmeter::common {

// The identifier kinds of the data model, each with its length bound and charset.
enum class IdKind {
  kTenant,       // 1..64   [A-Za-z0-9._-]
  kTeam,         // 1..64   [A-Za-z0-9._-]
  kUser,         // 1..128  [A-Za-z0-9._@+-]
  kApiKey,       // 1..64   [A-Za-z0-9._-]
  kApplication,  // 1..64   [A-Za-z0-9._-]
  kProvider,     // 1..64   [a-z0-9._-]
  kModel,        // 1..128  [A-Za-z0-9._:/-]
  kEventId,      // 1..128  [A-Za-z0-9._:/-]
  kProducerId,   // 1..128  [A-Za-z0-9._:-]
  kPolicyId,     // 1..64   [A-Za-z0-9._-]
};

size_t MaxLength(IdKind kind);

// Returns OK if `value` is a valid identifier of `kind`, else InvalidArgument:
// "<field>: must be 1..64 bytes of [A-Za-z0-9._-], got 70 bytes" or "... invalid byte 0x20 at 3".
absl::Status ValidateId(IdKind kind, std::string_view field, std::string_view value);

// As ValidateId, but the empty string is accepted (optional fields).
absl::Status ValidateOptionalId(IdKind kind, std::string_view field, std::string_view value);

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_VALIDATION_H_
