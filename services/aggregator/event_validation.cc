#include "services/aggregator/event_validation.h"

#include "absl/strings/str_format.h"
#include "services/common/validation.h"

namespace tokenmeter::aggregator {
namespace {

using common::IdKind;

// Runs one check and, on failure, records its reason.
bool Failed(const absl::Status& s, const char* why, std::string* reason) {
  if (s.ok()) return false;
  if (reason != nullptr) *reason = why;
  return true;
}

absl::Status CheckScope(const RequestScope& s, std::string_view p, std::string* reason) {
  const std::string prefix(p);
  absl::Status st;
  if (Failed(st = common::ValidateId(IdKind::kTenant, prefix + "tenant", s.tenant),
             "invalid_tenant", reason) ||
      Failed(st = common::ValidateId(IdKind::kTeam, prefix + "team", s.team), "invalid_team",
             reason) ||
      Failed(st = common::ValidateId(IdKind::kUser, prefix + "user", s.user), "invalid_user",
             reason) ||
      Failed(st = common::ValidateOptionalId(IdKind::kApiKey, prefix + "api_key", s.api_key),
             "invalid_api_key", reason) ||
      Failed(st = common::ValidateOptionalId(IdKind::kProvider, prefix + "provider", s.provider),
             "invalid_provider", reason) ||
      Failed(st = common::ValidateOptionalId(IdKind::kModel, prefix + "model", s.model),
             "invalid_model", reason)) {
    return st;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTokens(const TokenCounts& t, const EventLimits& limits,
                            std::string_view field_prefix, std::string* reason) {
  const std::pair<const char*, uint64_t> counts[] = {{"input", t.input},
                                                     {"cached_input", t.cached_input},
                                                     {"output", t.output},
                                                     {"reasoning", t.reasoning}};
  for (const auto& [name, value] : counts) {
    if (value > limits.max_tokens) {
      if (reason != nullptr) *reason = "token_out_of_range";
      return absl::InvalidArgumentError(absl::StrFormat("%s%s: %d exceeds the limit of %d",
                                                        std::string(field_prefix), name, value,
                                                        limits.max_tokens));
    }
  }
  if (t.cached_input > t.input || t.reasoning > t.output) {
    if (reason != nullptr) *reason = "token_subset";
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s%s: must not exceed %s (it is a subset of it)", std::string(field_prefix),
        t.cached_input > t.input ? "cached_input" : "reasoning",
        t.cached_input > t.input ? "input" : "output"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRequestScope(const RequestScope& scope, std::string_view field_prefix) {
  return CheckScope(scope, field_prefix, nullptr);
}

absl::Status ValidateEvent(const Event& e, const EventLimits& limits, absl::Time now,
                           std::string* reason) {
  absl::Status st;
  if (Failed(st = common::ValidateId(IdKind::kEventId, "event_id", e.event_id), "invalid_event_id",
             reason)) {
    return st;
  }
  if (!(st = CheckScope(e.scope, "", reason)).ok()) return st;
  if (e.scope.provider.empty() || e.scope.model.empty()) {
    if (reason != nullptr)
      *reason = e.scope.provider.empty() ? "invalid_provider" : "invalid_model";
    return absl::InvalidArgumentError(e.scope.provider.empty() ? "provider: required"
                                                               : "model: required");
  }
  if (Failed(st = common::ValidateOptionalId(IdKind::kApplication, "application", e.application),
             "invalid_application", reason)) {
    return st;
  }
  if (!(st = ValidateTokens(e.tokens, limits, "tokens.", reason)).ok()) return st;
  if (e.occurred_at == absl::InfinitePast() || e.occurred_at == absl::UnixEpoch()) {
    if (reason != nullptr) *reason = "missing_time";
    return absl::InvalidArgumentError("occurred_at: required");
  }
  if (e.occurred_at > now + limits.max_future_skew) {
    if (reason != nullptr) *reason = "in_future";
    return absl::InvalidArgumentError(absl::StrFormat(
        "occurred_at: %s is more than %s in the future", absl::FormatTime(e.occurred_at),
        absl::FormatDuration(limits.max_future_skew)));
  }
  if (e.occurred_at < now - limits.max_age) {
    if (reason != nullptr) *reason = "too_old";
    return absl::InvalidArgumentError(
        absl::StrFormat("occurred_at: %s is older than the maximum event age of %s",
                        absl::FormatTime(e.occurred_at), absl::FormatDuration(limits.max_age)));
  }
  return absl::OkStatus();
}

}  // namespace tokenmeter::aggregator
