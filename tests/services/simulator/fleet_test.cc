#include "services/simulator/fleet.h"

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "services/aggregator/policy.h"

namespace tokenmeter::simulator {
namespace {

// The sample configuration the local cluster runs with (deploy/local/run.sh).
const std::string kPolicyFile = std::string(TOKENMETER_SOURCE_DIR) + "/deploy/local/policies.yaml";

TEST(FleetTest, EveryModelTheFleetUsesHasAPriceInTheLocalPolicyFile) {
  absl::StatusOr<aggregator::ConfigFile> config = aggregator::LoadConfigFile(kPolicyFile);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->prices.has_value());
  const Fleet fleet = DefaultFleet();
  for (const Team& team : fleet.teams) {
    for (const ModelChoice& m : team.models) {
      EXPECT_NE(config->prices->Find(m.provider, m.model), nullptr)
          << team.tenant << "/" << team.team << " uses unpriced " << m.provider << "/" << m.model;
    }
  }
  for (const ReportOnlyApp& app : fleet.apps) {
    for (const ModelChoice& m : app.models) {
      EXPECT_NE(config->prices->Find(m.provider, m.model), nullptr) << app.application;
    }
  }
}

TEST(FleetTest, TheTokenmaxxingTeamIsTheOneTheLocalPoliciesBudget) {
  absl::StatusOr<aggregator::ConfigFile> config = aggregator::LoadConfigFile(kPolicyFile);
  ASSERT_TRUE(config.ok()) << config.status();
  std::set<std::string> budgeted_teams;
  for (const aggregator::Policy& p : config->policies) {
    budgeted_teams.insert(p.selector.tenant + "/" + p.selector.team);
  }
  const Fleet fleet = DefaultFleet();
  int agent_teams = 0;
  for (const Team& team : fleet.teams) {
    if (team.workload != Workload::kAgent) continue;
    ++agent_teams;
    EXPECT_EQ(team.tenant + "/" + team.team, "acme/agents");
    EXPECT_TRUE(budgeted_teams.count("acme/agents")) << "no policy selects acme/agents";
  }
  EXPECT_EQ(agent_teams, 1);
  EXPECT_EQ(fleet.tenants, (std::vector<std::string>{"acme", "globex", "initech", "umbrella"}));
}

TEST(FleetTest, SidecarsAreDealtRoundRobinToTeamsThenApps) {
  Fleet fleet = DefaultFleet();
  for (const Team& team : fleet.teams) EXPECT_EQ(team.sidecar, 0);
  AssignSidecars(2, &fleet);
  std::vector<int> assignment;
  for (const Team& team : fleet.teams) assignment.push_back(team.sidecar);
  for (const ReportOnlyApp& app : fleet.apps) assignment.push_back(app.sidecar);
  ASSERT_EQ(assignment.size(), 16u);
  for (size_t i = 0; i < assignment.size(); ++i) EXPECT_EQ(assignment[i], i % 2) << i;
  EXPECT_EQ(fleet.teams[0].team, "agents");  // The tokenmaxxing team's pod: sidecar 0.
  // The same fleet and count give the same assignment; a single sidecar serves everyone.
  Fleet again = DefaultFleet();
  AssignSidecars(2, &again);
  for (size_t i = 0; i < fleet.apps.size(); ++i) {
    EXPECT_EQ(again.apps[i].sidecar, fleet.apps[i].sidecar);
  }
  AssignSidecars(1, &again);
  for (const Team& team : again.teams) EXPECT_EQ(team.sidecar, 0);
  for (const ReportOnlyApp& app : again.apps) EXPECT_EQ(app.sidecar, 0);
}

TEST(FleetTest, CallShapesKeepTokenInvariants) {
  Rng rng(42);
  const ModelChoice reasoning{"openai", "o4-mini"};
  for (int i = 0; i < 2000; ++i) {
    const CallShape c = i % 2 == 0 ? DrawChatCall(rng, reasoning, 0.02)
                                   : DrawAgentStep(rng, reasoning, i % 30, 0.02);
    ASSERT_LE(c.actual.cached_input, c.actual.input);
    ASSERT_LE(c.actual.reasoning, c.actual.output);
    ASSERT_EQ(c.actual.input, c.estimate.input);    // The prompt is known before the call.
    ASSERT_LE(c.actual.output, c.estimate.output);  // Output never exceeds max_tokens.
    ASSERT_GT(c.latency, absl::ZeroDuration());
  }
}

TEST(FleetTest, AnAgenticLoopBurnsHundredsOfTimesAChatCall) {
  Rng rng(7);
  const ModelChoice model{"anthropic", "claude-sonnet-4-20250514"};
  double chat_total = 0;
  for (int i = 0; i < 1000; ++i) chat_total += DrawChatCall(rng, model, 0).actual.total();
  const double chat_mean = chat_total / 1000;
  double loop_total = 0;
  const int loops = 200;
  for (int l = 0; l < loops; ++l) {
    const int steps = DrawAgentLoopLength(rng);
    ASSERT_GE(steps, 8);
    ASSERT_LE(steps, 24);
    for (int s = 0; s < steps; ++s) loop_total += DrawAgentStep(rng, model, s, 0).actual.total();
  }
  const double ratio = loop_total / loops / chat_mean;
  EXPECT_GE(ratio, 100);
  EXPECT_LE(ratio, 1000);
}

TEST(FleetTest, FailureRateIsRoughlyHonoured) {
  Rng rng(3);
  const ModelChoice model{"openai", "gpt-4o"};
  int failures = 0;
  for (int i = 0; i < 10000; ++i) failures += DrawChatCall(rng, model, 0.02).fails ? 1 : 0;
  EXPECT_GT(failures, 100);
  EXPECT_LT(failures, 300);
}

}  // namespace
}  // namespace tokenmeter::simulator
