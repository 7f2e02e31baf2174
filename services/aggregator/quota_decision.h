// The answer of a quota check: per-limit state and the overall result. Plain values.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_QUOTA_DECISION_H_
#define TOKENMETER_SERVICES_AGGREGATOR_QUOTA_DECISION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "services/aggregator/model.h"

namespace tokenmeter::aggregator {

struct LimitState {
  std::string policy_id;
  std::string scope;  // The counter scope the limit reads, rendered by ScopeToString.
  Metric metric = Metric::kTotalTokens;
  WindowKind window = WindowKind::kDay;
  Mode mode = Mode::kEnforce;
  uint64_t limit = 0;
  uint64_t used = 0;
  uint64_t outstanding = 0;
  uint64_t remaining = 0;  // limit - used - outstanding, saturating at 0.
  uint64_t requested = 0;
  bool exceeded = false;      // used + outstanding + requested > limit.
  uint32_t warn_percent = 0;  // Highest soft threshold reached after the request.
  absl::Duration retry_after = absl::ZeroDuration();  // For exceeded limits; 0 = unknown.
};

struct Decision {
  bool allowed = true;
  bool shadow_denied = false;
  std::vector<LimitState> limits;  // Exceeded first.
  absl::Duration retry_after = absl::ZeroDuration();
  absl::Time expires_at = absl::InfinitePast();  // For Reserve.
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_QUOTA_DECISION_H_
