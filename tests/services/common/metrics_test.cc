#include "services/common/metrics.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tokenmeter::common {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, CountersAndGaugesRenderInTextFormat004) {
  Registry registry;
  registry.AddCounter("tm_requests_total", "Requests.", {"code"}).WithLabels({"ok"}).Inc(3);
  registry.AddGauge("tm_queue_bytes", "Queue bytes.").WithLabels({}).Set(1234567890123);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# HELP tm_requests_total Requests.\n"
                              "# TYPE tm_requests_total counter\n"
                              "tm_requests_total{code=\"ok\"} 3\n"));
  // Large integers print in full, never as 1.23457e+12.
  EXPECT_THAT(text, HasSubstr("# TYPE tm_queue_bytes gauge\ntm_queue_bytes 1234567890123\n"));
}

TEST(MetricsTest, LabelValuesAndHelpAreEscaped) {
  Registry registry;
  registry.AddCounter("tm_x_total", "Line one\nback\\slash", {"v"})
      .WithLabels({"quote\" back\\ nl\n"})
      .Inc();
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# HELP tm_x_total Line one\\nback\\\\slash\n"));
  EXPECT_THAT(text, HasSubstr("tm_x_total{v=\"quote\\\" back\\\\ nl\\n\"} 1\n"));
}

TEST(MetricsTest, HistogramsHaveCumulativeBucketsInfSumAndCount) {
  Registry registry;
  Histogram& h = registry.AddHistogram("tm_latency_seconds", "Latency.", {0.1, 1}).WithLabels({});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(0.5);
  h.Observe(7);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE tm_latency_seconds histogram\n"
                              "tm_latency_seconds_bucket{le=\"0.1\"} 1\n"
                              "tm_latency_seconds_bucket{le=\"1\"} 3\n"
                              "tm_latency_seconds_bucket{le=\"+Inf\"} 4\n"
                              "tm_latency_seconds_sum 8.05\n"
                              "tm_latency_seconds_count 4\n"));
}

TEST(MetricsTest, SeriesPastTheCapFoldIntoOtherKeepingUnfoldedLabels) {
  Registry registry;
  auto& family = registry.AddCounter("tm_tokens_total", "Tokens.", {"user", "type"}, 2, 1);
  family.WithLabels({"a", "input"}).Inc();
  family.WithLabels({"b", "input"}).Inc();
  family.WithLabels({"c", "output"}).Inc(5);  // Past the cap: user folded, type kept.
  family.WithLabels({"d", "output"}).Inc(7);
  EXPECT_EQ(family.size(), 3u);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("tm_tokens_total{user=\"other\",type=\"output\"} 12\n"));
  EXPECT_THAT(text, Not(HasSubstr("user=\"c\"")));
  EXPECT_THAT(text,
              HasSubstr("tokenmeter_metrics_folded_updates_total{family=\"tm_tokens_total\"} 2\n"));
}

}  // namespace
}  // namespace tokenmeter::common
