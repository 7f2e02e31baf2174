// Conversions between the public protos and the domain types. No validation happens here:
// values are copied as they are, and the engines validate them.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_PROTO_CONVERT_H_
#define TOKENMETER_SERVICES_AGGREGATOR_PROTO_CONVERT_H_

#include <optional>

#include "absl/status/statusor.h"
#include "services/aggregator/model.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/pricing.h"
#include "services/aggregator/quota_decision.h"
#include "tokenmeter/v1/admin.pb.h"
#include "tokenmeter/v1/event.pb.h"
#include "tokenmeter/v1/quota.pb.h"

namespace tokenmeter::aggregator {

Event FromProto(const v1::UsageEvent& proto);
void ToProto(const Event& event, v1::UsageEvent* proto);

RequestScope FromProto(const v1::Scope& proto);
void ToProto(const RequestScope& scope, v1::Scope* proto);

TokenCounts FromProto(const v1::TokenCounts& proto);
void ToProto(const TokenCounts& tokens, v1::TokenCounts* proto);

// Returns InvalidArgument naming the field for unspecified enums.
absl::StatusOr<Policy> FromProto(const v1::Policy& proto);
void ToProto(const Policy& policy, v1::Policy* proto);

ModelPrice FromProto(const v1::Price& proto);
void ToProto(const ModelPrice& price, v1::Price* proto);

// nullopt for METRIC_UNSPECIFIED / WINDOW_UNSPECIFIED (and unknown values).
std::optional<Metric> MetricFromProto(v1::Metric metric);
std::optional<WindowKind> WindowFromProto(v1::Window window);
v1::Metric ToProto(Metric metric);
v1::Window ToProto(WindowKind window);

void DecisionToProto(const Decision& decision, v1::QuotaDecision* proto);
Decision DecisionFromProto(const v1::QuotaDecision& proto);

// 0 (unset) maps to absl::UnixEpoch(), which validation reports as missing.
absl::Time TimeFromProto(int64_t seconds, int32_t nanos);

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_PROTO_CONVERT_H_
