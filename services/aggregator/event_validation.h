// Validation of usage events and token counts at the aggregator's edge. Every bound on
// untrusted input lives here, in one place. Pure functions; thread-safe.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_EVENT_VALIDATION_H_
#define TOKENMETER_SERVICES_AGGREGATOR_EVENT_VALIDATION_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "services/aggregator/model.h"

namespace tokenmeter::aggregator {

struct EventLimits {
  // Largest count of one token type in one event. Default: 1e9 (far above any context window,
  // far below overflow: 1e4 events x 1e9 x 4 types cannot overflow a batch sum).
  uint64_t max_tokens = 1'000'000'000;
  // How far in the future occurred_at may be (clock skew). Default: 5 min.
  absl::Duration max_future_skew = absl::Minutes(5);
  // How old occurred_at may be. Default: 35 days (a late event still lands in its month).
  absl::Duration max_age = absl::Hours(24 * 35);
};

// Returns OK, or InvalidArgument naming the field. On error *reason (if not null) gets a
// machine-readable reason for the dead-letter list and metrics: "invalid_<field>",
// "token_out_of_range", "token_subset", "missing_time", "too_old" or "in_future".
absl::Status ValidateEvent(const Event& event, const EventLimits& limits, absl::Time now,
                           std::string* reason);

// Validates a full request scope of a quota call (tenant, team, user required; api_key,
// provider, model optional). Field names in errors are prefixed with `field_prefix`.
absl::Status ValidateRequestScope(const RequestScope& scope, std::string_view field_prefix);

// Validates token counts: each <= limits.max_tokens, cached_input <= input,
// reasoning <= output.
absl::Status ValidateTokens(const TokenCounts& tokens, const EventLimits& limits,
                            std::string_view field_prefix, std::string* reason);

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_EVENT_VALIDATION_H_
