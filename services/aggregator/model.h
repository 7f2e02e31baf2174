// Domain types of the aggregator: what a usage event, a request scope and a limit are,
// independent of protobuf and gRPC. Plain values; safe to copy between threads.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_MODEL_H_
#define TOKENMETER_SERVICES_AGGREGATOR_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace tokenmeter::aggregator {

// Token counts of one call. cached_input is a subset of input and reasoning a subset of
// output (OpenAI / OpenTelemetry convention), so total tokens = input + output.
struct TokenCounts {
  uint64_t input = 0;
  uint64_t cached_input = 0;
  uint64_t output = 0;
  uint64_t reasoning = 0;
};

// The full scope of one request or event. api_key and model may be empty.
struct RequestScope {
  std::string tenant;
  std::string team;
  std::string user;
  std::string api_key;
  std::string provider;
  std::string model;
};

// One LLM call's usage, validated.
struct Event {
  std::string event_id;
  RequestScope scope;
  std::string application;
  TokenCounts tokens;
  absl::Time occurred_at;
};

enum class Metric { kInputTokens, kOutputTokens, kTotalTokens, kRequests, kCostMicroUsd };

// kMinute is a sliding 60 s window; the others are calendar windows in a time zone.
enum class WindowKind { kMinute, kHour, kDay, kMonth };

enum class Mode { kEnforce, kShadow };
enum class FailureMode { kOpen, kClosed };
enum class ExpiryAction { kRelease, kCommitEstimate };

// Stable lower-case names used in YAML, logs and metric labels ("total_tokens", "month").
const char* MetricName(Metric metric);
const char* WindowKindName(WindowKind window);
const char* ModeName(Mode mode);

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_MODEL_H_
