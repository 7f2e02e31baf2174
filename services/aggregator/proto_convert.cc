#include "services/aggregator/proto_convert.h"

#include "absl/strings/str_format.h"
#include "storage/key_codec.h"

namespace tokenmeter::aggregator {

absl::Time TimeFromProto(int64_t seconds, int32_t nanos) {
  return absl::FromUnixSeconds(seconds) + absl::Nanoseconds(nanos);
}

Event FromProto(const v1::UsageEvent& p) {
  Event e;
  e.event_id = p.event_id();
  e.scope.tenant = p.tenant();
  e.scope.team = p.team();
  e.scope.user = p.user();
  e.scope.api_key = p.api_key();
  e.scope.provider = p.provider();
  e.scope.model = p.model();
  e.application = p.application();
  e.tokens = FromProto(p.tokens());
  e.occurred_at = TimeFromProto(p.occurred_at().seconds(), p.occurred_at().nanos());
  return e;
}

void ToProto(const Event& e, v1::UsageEvent* p) {
  p->set_event_id(e.event_id);
  p->set_tenant(e.scope.tenant);
  p->set_team(e.scope.team);
  p->set_user(e.scope.user);
  p->set_api_key(e.scope.api_key);
  p->set_provider(e.scope.provider);
  p->set_model(e.scope.model);
  p->set_application(e.application);
  ToProto(e.tokens, p->mutable_tokens());
  const absl::Duration since_epoch = e.occurred_at - absl::UnixEpoch();
  const int64_t seconds = absl::ToInt64Seconds(since_epoch);
  p->mutable_occurred_at()->set_seconds(seconds);
  p->mutable_occurred_at()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(since_epoch - absl::Seconds(seconds))));
}

RequestScope FromProto(const v1::Scope& p) {
  return {p.tenant(), p.team(), p.user(), p.api_key(), p.provider(), p.model()};
}

void ToProto(const RequestScope& s, v1::Scope* p) {
  p->set_tenant(s.tenant);
  p->set_team(s.team);
  p->set_user(s.user);
  p->set_api_key(s.api_key);
  p->set_provider(s.provider);
  p->set_model(s.model);
}

TokenCounts FromProto(const v1::TokenCounts& p) {
  return {p.input(), p.cached_input(), p.output(), p.reasoning()};
}

void ToProto(const TokenCounts& t, v1::TokenCounts* p) {
  p->set_input(t.input);
  p->set_cached_input(t.cached_input);
  p->set_output(t.output);
  p->set_reasoning(t.reasoning);
}

std::optional<Metric> MetricFromProto(v1::Metric metric) {
  switch (metric) {
    case v1::METRIC_INPUT_TOKENS:
      return Metric::kInputTokens;
    case v1::METRIC_OUTPUT_TOKENS:
      return Metric::kOutputTokens;
    case v1::METRIC_TOTAL_TOKENS:
      return Metric::kTotalTokens;
    case v1::METRIC_REQUESTS:
      return Metric::kRequests;
    case v1::METRIC_COST_MICRO_USD:
      return Metric::kCostMicroUsd;
    default:
      return std::nullopt;
  }
}

std::optional<WindowKind> WindowFromProto(v1::Window window) {
  switch (window) {
    case v1::WINDOW_MINUTE:
      return WindowKind::kMinute;
    case v1::WINDOW_HOUR:
      return WindowKind::kHour;
    case v1::WINDOW_DAY:
      return WindowKind::kDay;
    case v1::WINDOW_MONTH:
      return WindowKind::kMonth;
    default:
      return std::nullopt;
  }
}

v1::Metric ToProto(Metric metric) {
  switch (metric) {
    case Metric::kInputTokens:
      return v1::METRIC_INPUT_TOKENS;
    case Metric::kOutputTokens:
      return v1::METRIC_OUTPUT_TOKENS;
    case Metric::kTotalTokens:
      return v1::METRIC_TOTAL_TOKENS;
    case Metric::kRequests:
      return v1::METRIC_REQUESTS;
    case Metric::kCostMicroUsd:
      return v1::METRIC_COST_MICRO_USD;
  }
  return v1::METRIC_UNSPECIFIED;
}

v1::Window ToProto(WindowKind window) {
  switch (window) {
    case WindowKind::kMinute:
      return v1::WINDOW_MINUTE;
    case WindowKind::kHour:
      return v1::WINDOW_HOUR;
    case WindowKind::kDay:
      return v1::WINDOW_DAY;
    case WindowKind::kMonth:
      return v1::WINDOW_MONTH;
  }
  return v1::WINDOW_UNSPECIFIED;
}

namespace {

absl::StatusOr<Limit> LimitFromProto(const v1::Limit& p, int index) {
  Limit l;
  const std::optional<Metric> metric = MetricFromProto(p.metric());
  if (!metric) {
    return absl::InvalidArgumentError(absl::StrFormat("limits[%d].metric: required", index));
  }
  const std::optional<WindowKind> window = WindowFromProto(p.window());
  if (!window) {
    return absl::InvalidArgumentError(absl::StrFormat("limits[%d].window: required", index));
  }
  l.metric = *metric;
  l.window = *window;
  l.amount = p.amount();
  return l;
}

}  // namespace

absl::StatusOr<Policy> FromProto(const v1::Policy& p) {
  Policy policy;
  policy.id = p.id();
  policy.selector = {p.selector().tenant(), p.selector().team(), p.selector().user(),
                     p.selector().api_key(), p.selector().model()};
  if (!p.selector().provider().empty()) {
    return absl::InvalidArgumentError("selector.provider: selectors match models, not providers");
  }
  for (int i = 0; i < p.limits_size(); ++i) {
    auto limit = LimitFromProto(p.limits(i), i);
    if (!limit.ok()) return limit.status();
    policy.limits.push_back(*limit);
  }
  policy.mode = p.mode() == v1::MODE_SHADOW ? Mode::kShadow : Mode::kEnforce;
  policy.failure_mode =
      p.failure_mode() == v1::FAILURE_MODE_CLOSED ? FailureMode::kClosed : FailureMode::kOpen;
  policy.warn_percents.assign(p.warn_percents().begin(), p.warn_percents().end());
  policy.time_zone = p.time_zone().empty() ? "UTC" : p.time_zone();
  policy.on_expiry = p.on_expiry() == v1::EXPIRY_COMMIT_ESTIMATE ? ExpiryAction::kCommitEstimate
                                                                 : ExpiryAction::kRelease;
  policy.source = p.source();
  return policy;
}

void ToProto(const Policy& policy, v1::Policy* p) {
  p->set_id(policy.id);
  auto* s = p->mutable_selector();
  s->set_tenant(policy.selector.tenant);
  s->set_team(policy.selector.team);
  s->set_user(policy.selector.user);
  s->set_api_key(policy.selector.api_key);
  s->set_model(policy.selector.model);
  for (const Limit& l : policy.limits) {
    auto* lp = p->add_limits();
    lp->set_metric(ToProto(l.metric));
    lp->set_window(ToProto(l.window));
    lp->set_amount(l.amount);
  }
  p->set_mode(policy.mode == Mode::kShadow ? v1::MODE_SHADOW : v1::MODE_ENFORCE);
  p->set_failure_mode(policy.failure_mode == FailureMode::kClosed ? v1::FAILURE_MODE_CLOSED
                                                                  : v1::FAILURE_MODE_OPEN);
  for (uint32_t w : policy.warn_percents) p->add_warn_percents(w);
  p->set_time_zone(policy.time_zone);
  p->set_on_expiry(policy.on_expiry == ExpiryAction::kCommitEstimate ? v1::EXPIRY_COMMIT_ESTIMATE
                                                                     : v1::EXPIRY_RELEASE);
  p->set_source(policy.source);
}

ModelPrice FromProto(const v1::Price& p) {
  return {p.provider(), p.model(), p.input_per_mtok_micro_usd(),
          p.cached_input_per_mtok_micro_usd(), p.output_per_mtok_micro_usd()};
}

void ToProto(const ModelPrice& m, v1::Price* p) {
  p->set_provider(m.provider);
  p->set_model(m.model);
  p->set_input_per_mtok_micro_usd(m.input_per_mtok);
  p->set_cached_input_per_mtok_micro_usd(m.cached_input_per_mtok);
  p->set_output_per_mtok_micro_usd(m.output_per_mtok);
}

}  // namespace tokenmeter::aggregator

namespace tokenmeter::aggregator {

void DecisionToProto(const Decision& d, v1::QuotaDecision* p) {
  p->set_result(d.allowed ? v1::QuotaDecision::ALLOWED : v1::QuotaDecision::DENIED);
  p->set_shadow_denied(d.shadow_denied);
  p->set_retry_after_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(d.retry_after)));
  if (d.expires_at != absl::InfinitePast())
    p->set_expires_at_unix_ms(absl::ToUnixMillis(d.expires_at));
  for (const LimitState& l : d.limits) {
    v1::LimitStatus* s = p->add_limits();
    s->set_policy_id(l.policy_id);
    s->set_scope(l.scope);
    s->set_metric(ToProto(l.metric));
    s->set_window(ToProto(l.window));
    s->set_mode(l.mode == Mode::kShadow ? v1::MODE_SHADOW : v1::MODE_ENFORCE);
    s->set_limit(l.limit);
    s->set_used(l.used);
    s->set_outstanding(l.outstanding);
    s->set_remaining(l.remaining);
    s->set_requested(l.requested);
    s->set_exceeded(l.exceeded);
    s->set_warn_percent(l.warn_percent);
  }
}

Decision DecisionFromProto(const v1::QuotaDecision& p) {
  Decision d;
  d.allowed = p.result() != v1::QuotaDecision::DENIED;
  d.shadow_denied = p.shadow_denied();
  d.retry_after = absl::Milliseconds(p.retry_after_ms());
  d.expires_at = p.expires_at_unix_ms() == 0 ? absl::InfinitePast()
                                             : absl::FromUnixMillis(p.expires_at_unix_ms());
  for (const v1::LimitStatus& s : p.limits()) {
    LimitState l;
    l.policy_id = s.policy_id();
    l.scope = s.scope();
    l.metric = MetricFromProto(s.metric()).value_or(Metric::kTotalTokens);
    l.window = WindowFromProto(s.window()).value_or(WindowKind::kDay);
    l.mode = s.mode() == v1::MODE_SHADOW ? Mode::kShadow : Mode::kEnforce;
    l.limit = s.limit();
    l.used = s.used();
    l.outstanding = s.outstanding();
    l.remaining = s.remaining();
    l.requested = s.requested();
    l.exceeded = s.exceeded();
    l.warn_percent = s.warn_percent();
    d.limits.push_back(std::move(l));
  }
  return d;
}

}  // namespace tokenmeter::aggregator
