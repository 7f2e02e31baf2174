#include "services/aggregator/model.h"

namespace tokenmeter::aggregator {

const char* MetricName(Metric metric) {
  switch (metric) {
    case Metric::kInputTokens:
      return "input_tokens";
    case Metric::kOutputTokens:
      return "output_tokens";
    case Metric::kTotalTokens:
      return "total_tokens";
    case Metric::kRequests:
      return "requests";
    case Metric::kCostMicroUsd:
      return "cost_micro_usd";
  }
  return "unknown";
}

const char* WindowKindName(WindowKind window) {
  switch (window) {
    case WindowKind::kMinute:
      return "minute";
    case WindowKind::kHour:
      return "hour";
    case WindowKind::kDay:
      return "day";
    case WindowKind::kMonth:
      return "month";
  }
  return "unknown";
}

const char* ModeName(Mode mode) { return mode == Mode::kEnforce ? "enforce" : "shadow"; }

}  // namespace tokenmeter::aggregator
