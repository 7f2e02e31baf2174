#include "services/aggregator/policy.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tokenmeter::aggregator {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---------------------------------------------------------------------------------------------
// Rendering: each value as one canonical line, so expectations read like the YAML.

std::string RenderLimits(const std::vector<Limit>& limits) {
  return absl::StrJoin(limits, ",", [](std::string* out, const Limit& limit) {
    absl::StrAppend(out, MetricName(limit.metric), "/", WindowKindName(limit.window), "=",
                    limit.amount);
  });
}

std::string RenderPolicy(const Policy& p) {
  const Selector& s = p.selector;
  return absl::StrCat(
      p.id, " sel=", s.tenant, "|", s.team, "|", s.user, "|", s.api_key, "|", s.model,
      " limits=", RenderLimits(p.limits), " mode=", ModeName(p.mode),
      " failure=", p.failure_mode == FailureMode::kOpen ? "open" : "closed",
      " warn=", absl::StrJoin(p.warn_percents, ","), " tz=", p.time_zone,
      " expiry=", p.on_expiry == ExpiryAction::kRelease ? "release" : "commit_estimate",
      " source=", p.source);
}

std::string RenderPrice(const ModelPrice& price) {
  return absl::StrCat(price.provider, "/", price.model, " in=", price.input_per_mtok,
                      " cached=", price.cached_input_per_mtok, " out=", price.output_per_mtok);
}

// "policy metric/window @ tenant|team|user|api_key|model", one line per matched limit.
std::string RenderMatches(const std::vector<MatchedLimit>& matches) {
  return absl::StrJoin(matches, "\n", [](std::string* out, const MatchedLimit& m) {
    const storage::ScopeKey& c = m.counter_scope;
    absl::StrAppend(out, m.policy->id, " ", RenderLimits({m.limit}), " @ ", c.tenant, "|", c.team,
                    "|", c.user, "|", c.api_key, "|", c.model);
  });
}

// ---------------------------------------------------------------------------------------------
// ParseConfigYaml: a full valid file.

constexpr char kFullConfig[] =
    R"(# Budgets for the acme tenant, plus a fleet-wide per-user rate limit.
policies:
  - id: acme-monthly
    selector: {tenant: acme}
    limits:
      - {metric: total_tokens, window: day, amount: 1000000}
      - {metric: cost_usd, window: month, amount: "250.00"}
      - {metric: input_tokens, window: hour, amount: 5000}
    mode: shadow
    failure_mode: closed
    warn_percents: [80, 100]
    time_zone: Europe/Berlin
    on_expiry: commit_estimate
  - id: per-user-minute
    selector:
      tenant: "*"
      team: "*"
      user: "*"
      api_key: ""
      model: gpt-4o
    limits:
      - metric: requests
        window: minute
        amount: 60
      - {metric: cost_usd, window: day, amount: 19.99}
      - {metric: cost_micro_usd, window: hour, amount: 1500000}
      - {metric: output_tokens, window: day, amount: 7}
prices:
  version: 3
  models:
    - {provider: openai, model: gpt-4o, input: "2.50", cached_input: "1.25", output: "10.00"}
    - {provider: anthropic, model: claude-sonnet-4, input: 3, output: 15.0}
)";

TEST(ParseConfigYamlTest, ParsesFullFile) {
  absl::StatusOr<ConfigFile> config = ParseConfigYaml(kFullConfig, "policies.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->policies.size(), 2u);
  EXPECT_EQ(RenderPolicy(config->policies[0]),
            "acme-monthly sel=acme|||| limits=total_tokens/day=1000000,"
            "cost_micro_usd/month=250000000,input_tokens/hour=5000 mode=shadow failure=closed "
            "warn=80,100 tz=Europe/Berlin expiry=commit_estimate source=file:policies.yaml");
  // 19.99 is converted from the scalar's text: through a double it would become 19989999.
  EXPECT_EQ(RenderPolicy(config->policies[1]),
            "per-user-minute sel=*|*|*||gpt-4o limits=requests/minute=60,"
            "cost_micro_usd/day=19990000,cost_micro_usd/hour=1500000,output_tokens/day=7 "
            "mode=enforce failure=open warn= tz=UTC expiry=release source=file:policies.yaml");
  ASSERT_TRUE(config->prices.has_value());
  EXPECT_EQ(config->prices->version(), 3u);
  const ModelPrice* gpt = config->prices->Find("openai", "gpt-4o");
  ASSERT_NE(gpt, nullptr);
  EXPECT_EQ(RenderPrice(*gpt), "openai/gpt-4o in=2500000 cached=1250000 out=10000000");
  const ModelPrice* claude = config->prices->Find("anthropic", "claude-sonnet-4");
  ASSERT_NE(claude, nullptr);  // cached_input defaults to input.
  EXPECT_EQ(RenderPrice(*claude),
            "anthropic/claude-sonnet-4 in=3000000 cached=3000000 out=15000000");
}

TEST(ParseConfigYamlTest, CostUsdTakesUpToSixDecimals) {
  absl::StatusOr<ConfigFile> config = ParseConfigYaml(
      "policies:\n  - id: p1\n    selector: {tenant: acme}\n"
      "    limits: [{metric: cost_usd, window: month, amount: 250.123456}]\n",
      "p.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(RenderLimits(config->policies[0].limits), "cost_micro_usd/month=250123456");
}

TEST(ParseConfigYamlTest, PricesAreOptionalAndPoliciesMayBeEmpty) {
  absl::StatusOr<ConfigFile> config = ParseConfigYaml("policies: []\n", "p.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->policies.empty());
  EXPECT_FALSE(config->prices.has_value());
}

// ---------------------------------------------------------------------------------------------
// ParseConfigYaml: every error names file, line and field path.

struct ErrorCase {
  const char* name;
  std::string yaml;
  const char* want_prefix;  // "<file>:<line>: <field path>: ..."
  const char* want_substr;
};

std::vector<ErrorCase> ErrorCases() {
  // Lines 1-4 of most cases; the first limit is on line 5.
  const std::string kHead = "policies:\n  - id: p1\n    selector: {tenant: acme}\n    limits:\n";
  const std::string kLimit5 = "      - {metric: total_tokens, window: day, amount: 100}\n";
  return {
      {"UnknownMetric", kHead + "      - {metric: tokens, window: day, amount: 5}\n",
       "p.yaml:5: policies[0].limits[0].metric: ",
       "unknown metric \"tokens\" (want input_tokens|output_tokens|total_tokens|requests|"
       "cost_micro_usd|cost_usd)"},
      {"UnknownWindow", kHead + kLimit5 + "      - {metric: requests, window: weekly, amount: 5}\n",
       "p.yaml:6: policies[0].limits[1].window: ",
       "unknown window \"weekly\" (want minute|hour|day|month)"},
      {"NegativeAmount", kHead + "      - {metric: requests, window: day, amount: -5}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "got \"-5\""},
      {"ZeroAmount", kHead + "      - {metric: requests, window: day, amount: 0}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "must be > 0"},
      {"FractionalAmount", kHead + "      - {metric: requests, window: day, amount: 1.5}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "integer in plain decimal digits, got \"1.5\""},
      {"ExponentAmount", kHead + "      - {metric: requests, window: day, amount: 1e6}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "got \"1e6\""},
      {"OverflowingAmount",
       kHead + "      - {metric: requests, window: day, amount: 18446744073709551616}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "out of range"},
      {"MissingAmount", kHead + "      - {metric: requests, window: day}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "is required"},
      {"CostUsdWithSevenDecimals",
       kHead + "      - {metric: cost_usd, window: month, amount: \"250.1234567\"}\n",
       "p.yaml:5: policies[0].limits[0].amount: ", "250.1234567"},
      {"SameMetricAndWindowTwice",
       kHead + kLimit5 + "      - {metric: total_tokens, window: day, amount: 200}\n",
       "p.yaml:6: policies[0].limits[1]: ", "same metric and window as limits[0]"},
      {"NoLimits", "policies:\n  - id: p1\n    selector: {tenant: acme}\n    limits: []\n",
       "p.yaml:4: policies[0].limits: ", "must have 1..16 entries, got 0"},
      {"BadTimeZone", kHead + kLimit5 + "    time_zone: Mars/Olympus_Mons\n",
       "p.yaml:6: policies[0].time_zone: ", "cannot load time zone \"Mars/Olympus_Mons\""},
      {"UserWithoutTeam",
       "policies:\n  - id: p1\n    selector:\n      tenant: acme\n      user: alice\n    limits:\n"
       "      - {metric: requests, window: day, amount: 5}\n",
       "p.yaml:5: policies[0].selector.user: ", "needs selector.team"},
      {"ApiKeyWithoutUser",
       "policies:\n  - id: p1\n    selector:\n      tenant: acme\n      team: \"*\"\n"
       "      api_key: \"*\"\n    limits: [{metric: requests, window: day, amount: 5}]\n",
       "p.yaml:6: policies[0].selector.api_key: ", "needs selector.user"},
      {"MissingTenant", "policies:\n  - id: p1\n    selector: {team: x}\n    limits:\n" + kLimit5,
       "p.yaml:3: policies[0].selector.tenant: ", "is required"},
      {"BadTeamCharset",
       "policies:\n  - id: p1\n    selector: {tenant: acme, team: \"r&d\"}\n    limits:\n" +
           kLimit5,
       "p.yaml:3: policies[0].selector.team: ", "invalid byte 0x26"},
      {"BadPolicyId",
       "policies:\n  - id: \"p 1\"\n    selector: {tenant: acme}\n    limits:\n" + kLimit5,
       "p.yaml:2: policies[0].id: ", "invalid byte 0x20"},
      {"UnknownPolicyKey", kHead + kLimit5 + "    mdoe: shadow\n",
       "p.yaml:6: policies[0].mdoe: ", "unknown key (want id|selector|limits|"},
      {"UnknownLimitKey", kHead + "      - {metric: requests, windw: day, amount: 5}\n",
       "p.yaml:5: policies[0].limits[0].windw: ", "unknown key (want metric|window|amount)"},
      {"UnknownTopLevelKey", "polices: []\n", "p.yaml:1: polices: ", "unknown key"},
      {"RepeatedKey", kHead + kLimit5 + "    mode: shadow\n    mode: enforce\n",
       "p.yaml:7: policies[0].mode: ", "repeated key"},
      {"UnknownMode", kHead + kLimit5 + "    mode: dry-run\n",
       "p.yaml:6: policies[0].mode: ", "unknown mode \"dry-run\" (want enforce|shadow)"},
      {"UnknownFailureMode", kHead + kLimit5 + "    failure_mode: maybe\n",
       "p.yaml:6: policies[0].failure_mode: ", "(want open|closed)"},
      {"UnknownExpiryAction", kHead + kLimit5 + "    on_expiry: keep\n",
       "p.yaml:6: policies[0].on_expiry: ", "(want release|commit_estimate)"},
      {"WarnPercentsNotAscending", kHead + kLimit5 + "    warn_percents: [90, 80]\n",
       "p.yaml:6: policies[0].warn_percents[1]: ", "must be ascending without repeats"},
      {"WarnPercentAbove100", kHead + kLimit5 + "    warn_percents: [80, 120]\n",
       "p.yaml:6: policies[0].warn_percents[1]: ", "must be 1..100, got 120"},
      {"DuplicatePolicyId",
       kHead + kLimit5 + "  - id: p1\n    selector: {tenant: globex}\n    limits:\n" + kLimit5,
       "p.yaml:6: policies[1].id: ", "duplicate policy id \"p1\" (first at line 2)"},
      {"YamlSyntaxUnquotedStar",
       "policies:\n  - id: p1\n    selector: {tenant: acme, team: *}\n    limits:\n" + kLimit5,
       "p.yaml:3: invalid YAML: ", "alias"},
      {"YamlSyntaxBadIndentation", "policies:\n  - id: p1\n   selector: {tenant: acme}\n",
       "p.yaml:3: invalid YAML: ", ""},
      {"EmptyFile", "# nothing here\n", "p.yaml:1: ", "no YAML document"},
      {"PoliciesMissing", "prices: {version: 1, models: []}\n",
       "p.yaml:1: policies: ", "is required"},
      {"PoliciesEmptyValue", "policies:\n", "p.yaml:1: policies: ", "must be a list"},
      {"TwoDocuments", "policies: []\n---\npolicies: []\n",
       "p.yaml:3: ", "more than one YAML document"},
      {"PriceVersionZero", "policies: []\nprices:\n  version: 0\n  models: []\n",
       "p.yaml:3: prices.version: ", "must be > 0"},
      {"PriceWithSevenDecimals",
       "policies: []\nprices:\n  version: 1\n  models:\n"
       "    - {provider: openai, model: gpt-4o, input: \"2.5000001\", output: \"10\"}\n",
       "p.yaml:5: prices.models[0].input: ", "2.5000001"},
      {"PriceProviderUpperCase",
       "policies: []\nprices:\n  version: 1\n  models:\n"
       "    - {provider: OpenAI, model: gpt-4o, input: \"2.5\", output: \"10\"}\n",
       "p.yaml:5: prices.models[0].provider: ", "invalid byte 0x4f"},
      {"PriceDuplicateModel",
       "policies: []\nprices:\n  version: 1\n  models:\n"
       "    - {provider: openai, model: gpt-4o, input: \"2.5\", output: \"10\"}\n"
       "    - {provider: openai, model: gpt-4o, input: \"3\", output: \"12\"}\n",
       "p.yaml:6: prices.models[1]: ", "same provider and model as prices.models[0]"},
  };
}

void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.name; }

class ParseErrorTest : public testing::TestWithParam<ErrorCase> {};

TEST_P(ParseErrorTest, NamesFileLineAndField) {
  const ErrorCase& c = GetParam();
  absl::StatusOr<ConfigFile> config = ParseConfigYaml(c.yaml, "p.yaml");
  ASSERT_FALSE(config.ok()) << c.yaml;
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), StartsWith(c.want_prefix)) << c.yaml;
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(c.want_substr)) << c.yaml;
}

INSTANTIATE_TEST_SUITE_P(AllKinds, ParseErrorTest, testing::ValuesIn(ErrorCases()),
                         [](const testing::TestParamInfo<ErrorCase>& info) {
                           return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------------------------
// ValidatePolicy (also the Admin RPC's check): errors name the field, without a file.

Policy ValidPolicy() {
  Policy policy;
  policy.id = "acme-daily";
  policy.selector.tenant = "acme";
  policy.limits = {{Metric::kTotalTokens, WindowKind::kDay, 1000}};
  return policy;
}

TEST(ValidatePolicyTest, AcceptsValidPolicy) { EXPECT_TRUE(ValidatePolicy(ValidPolicy()).ok()); }

TEST(ValidatePolicyTest, RejectsStructuralErrorsNamingTheField) {
  struct Case {
    std::function<void(Policy*)> mutate;
    const char* want_prefix;
  };
  const Case cases[] = {
      {[](Policy* p) { p->id = ""; }, "id: "},
      {[](Policy* p) { p->selector.tenant = ""; }, "selector.tenant: must not be empty"},
      {[](Policy* p) { p->selector.model = "gpt 4o"; }, "selector.model: invalid byte 0x20"},
      {[](Policy* p) { p->limits.clear(); }, "limits: must have 1..16 entries, got 0"},
      {[](Policy* p) {
         p->limits.resize(17, {Metric::kRequests, WindowKind::kDay, 1});
       },
       "limits: must have 1..16 entries, got 17"},
      {[](Policy* p) { p->limits[0].amount = 0; }, "limits[0].amount: must be > 0"},
      {[](Policy* p) { p->limits[0].metric = static_cast<Metric>(42); },
       "limits[0].metric: unknown metric"},
      {[](Policy* p) { p->warn_percents = {0}; }, "warn_percents[0]: must be 1..100, got 0"},
      {[](Policy* p) {
         p->warn_percents = {80, 80};
       },
       "warn_percents[1]: must be ascending"},
      {[](Policy* p) { p->time_zone = ""; }, "time_zone: want an IANA name"},
      {[](Policy* p) { p->time_zone = "localtime"; }, "time_zone: want an IANA name"},
      {[](Policy* p) { p->time_zone = "/etc/passwd"; }, "time_zone: want an IANA name"},
      {[](Policy* p) { p->time_zone = "Europe/Atlantis"; }, "time_zone: cannot load"},
  };
  for (const Case& c : cases) {
    Policy policy = ValidPolicy();
    c.mutate(&policy);
    const absl::Status status = ValidatePolicy(policy);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.want_prefix;
    EXPECT_THAT(std::string(status.message()), StartsWith(c.want_prefix));
  }
}

// ---------------------------------------------------------------------------------------------
// MatchLimits.

Policy MakePolicy(std::string id, Selector selector, Metric metric, WindowKind window) {
  Policy policy;
  policy.id = std::move(id);
  policy.selector = std::move(selector);
  policy.limits = {{metric, window, 100}};
  return policy;
}

std::vector<Policy> MatchingTestPolicies() {
  using M = Metric;
  using W = WindowKind;
  return {
      MakePolicy("tenant-wide", {"acme", "", "", "", ""}, M::kTotalTokens, W::kDay),
      MakePolicy("each-team", {"acme", "*", "", "", ""}, M::kTotalTokens, W::kMonth),
      MakePolicy("each-user", {"acme", "*", "*", "", ""}, M::kRequests, W::kMinute),
      MakePolicy("alice", {"acme", "research", "alice", "", ""}, M::kRequests, W::kHour),
      MakePolicy("gpt-4o-tenant", {"acme", "", "", "", "gpt-4o"}, M::kCostMicroUsd, W::kMonth),
      MakePolicy("each-model-per-team", {"acme", "*", "", "", "*"}, M::kInputTokens, W::kDay),
      MakePolicy("each-key", {"acme", "*", "*", "*", ""}, M::kRequests, W::kMinute),
      MakePolicy("sales-only", {"acme", "sales", "", "", ""}, M::kTotalTokens, W::kDay),
      MakePolicy("bob-only", {"acme", "research", "bob", "", ""}, M::kTotalTokens, W::kDay),
      MakePolicy("claude-only", {"acme", "", "", "", "claude-sonnet-4"}, M::kRequests, W::kDay),
      MakePolicy("other-tenant", {"globex", "", "", "", ""}, M::kTotalTokens, W::kDay),
      MakePolicy("every-tenant", {"*", "", "", "", ""}, M::kOutputTokens, W::kHour),
  };
}

TEST(MatchLimitsTest, RequestWithoutApiKey) {
  const std::vector<Policy> policies = MatchingTestPolicies();
  const RequestScope scope{"acme", "research", "alice", "", "openai", "gpt-4o"};
  EXPECT_EQ(RenderMatches(MatchLimits(policies, scope)),
            "tenant-wide total_tokens/day=100 @ acme||||\n"
            "each-team total_tokens/month=100 @ acme|research|||\n"
            "each-user requests/minute=100 @ acme|research|alice||\n"
            "alice requests/hour=100 @ acme|research|alice||\n"
            "gpt-4o-tenant cost_micro_usd/month=100 @ acme||||gpt-4o\n"
            "each-model-per-team input_tokens/day=100 @ acme|research|||gpt-4o\n"
            "every-tenant output_tokens/hour=100 @ acme||||");
}

TEST(MatchLimitsTest, ApiKeyStarMatchesOnlyRequestsWithKey) {
  const std::vector<Policy> policies = {
      MakePolicy("each-key", {"acme", "*", "*", "*", ""}, Metric::kRequests, WindowKind::kMinute)};
  EXPECT_EQ(RenderMatches(MatchLimits(policies, {"acme", "research", "alice", "", "", ""})), "");
  EXPECT_EQ(RenderMatches(MatchLimits(policies, {"acme", "research", "alice", "k-1", "", ""})),
            "each-key requests/minute=100 @ acme|research|alice|k-1|");
}

TEST(MatchLimitsTest, StarDoesNotMatchMissingLevelOrModel) {
  const std::vector<Policy> policies = {
      MakePolicy("each-team", {"acme", "*", "", "", ""}, Metric::kRequests, WindowKind::kDay),
      MakePolicy("each-model", {"acme", "", "", "", "*"}, Metric::kRequests, WindowKind::kHour)};
  EXPECT_EQ(RenderMatches(MatchLimits(policies, {"acme", "", "", "", "", ""})), "");
}

TEST(MatchLimitsTest, EveryLimitOfAPolicyPointsIntoTheGivenVector) {
  std::vector<Policy> policies = {ValidPolicy()};
  policies[0].limits.push_back({Metric::kRequests, WindowKind::kMinute, 5});
  const std::vector<MatchedLimit> matches = MatchLimits(policies, {"acme", "t", "u", "", "", ""});
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(matches[0].policy, &policies[0]);
  EXPECT_EQ(matches[1].policy, &policies[0]);
  EXPECT_EQ(RenderMatches(matches),
            "acme-daily total_tokens/day=1000 @ acme||||\n"
            "acme-daily requests/minute=5 @ acme||||");
}

// ---------------------------------------------------------------------------------------------
// EffectivePolicies.

Policy Sourced(std::string id, std::string tenant, std::string source) {
  Policy policy = ValidPolicy();
  policy.id = std::move(id);
  policy.selector.tenant = std::move(tenant);
  policy.source = std::move(source);
  return policy;
}

TEST(EffectivePoliciesTest, OverrideReplacesFilePolicyByIdAndRestFollowSortedById) {
  const std::vector<Policy> file = {Sourced("a", "acme", "file"), Sourced("b", "*", "file"),
                                    Sourced("c", "globex", "file"), Sourced("d", "acme", "file")};
  const std::vector<Policy> overrides = {Sourced("z", "acme", "override"),
                                         Sourced("b", "acme", "override"),
                                         Sourced("m", "acme", "override")};
  const std::vector<Policy> effective = EffectivePolicies(file, overrides, "acme");
  EXPECT_EQ(absl::StrJoin(effective, " ",
                          [](std::string* out, const Policy& p) {
                            absl::StrAppend(out, p.id, ":", p.selector.tenant, ":", p.source);
                          }),
            "a:acme:file b:acme:override d:acme:file m:acme:override z:acme:override");
}

TEST(EffectivePoliciesTest, WithoutOverridesKeepsMatchingFilePolicies) {
  const std::vector<Policy> file = {Sourced("a", "globex", "file"), Sourced("b", "*", "file")};
  const std::vector<Policy> effective = EffectivePolicies(file, {}, "acme");
  ASSERT_EQ(effective.size(), 1u);
  EXPECT_EQ(effective[0].id, "b");
}

// ---------------------------------------------------------------------------------------------
// PolicyFileWatcher.

// A config with one policy whose single limit has `amount`; the limit's window is on line 5.
std::string ConfigWithAmount(uint64_t amount, const char* window = "day") {
  return absl::StrCat("policies:\n  - id: p1\n    selector: {tenant: acme}\n    limits:\n",
                      "      - {metric: total_tokens, window: ", window, ", amount: ", amount,
                      "}\n");
}

// Collects what a watcher hands over. Thread-safe.
class LoadRecorder {
 public:
  PolicyFileWatcher::OnLoad Callback() {
    return [this](ConfigFile config) {
      absl::MutexLock lock(&mu_);
      loads_.push_back(std::move(config));
    };
  }

  // Waits at most 5 s until `count` loads arrived; returns whether they did.
  bool AwaitLoads(size_t count) {
    absl::MutexLock lock(&mu_);
    auto arrived = [this, count]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return loads_.size() >= count; };
    return mu_.AwaitWithTimeout(absl::Condition(&arrived), absl::Seconds(5));
  }

  size_t count() const {
    absl::MutexLock lock(&mu_);
    return loads_.size();
  }

  // The first limit's amount of the latest load, or 0 if there is none.
  uint64_t LatestAmount() const {
    absl::MutexLock lock(&mu_);
    if (loads_.empty() || loads_.back().policies.empty()) return 0;
    return loads_.back().policies[0].limits[0].amount;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<ConfigFile> loads_ ABSL_GUARDED_BY(mu_);
};

// Polls `condition` until it holds, for at most 5 s; returns whether it held.
bool Eventually(const std::function<bool()>& condition) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

class PolicyFileWatcherTest : public testing::Test {
 protected:
  void SetUp() override {
    const std::string name = testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = std::filesystem::path(testing::TempDir()) /
           absl::StrCat("policy_watcher_test_", getpid(), "_", name);
    std::error_code error;
    std::filesystem::remove_all(dir_, error);
    ASSERT_TRUE(std::filesystem::create_directories(dir_, error)) << error.message();
    path_ = (dir_ / "policies.yaml").string();
  }

  void TearDown() override {
    std::error_code error;
    std::filesystem::remove_all(dir_, error);
  }

  // Replaces the file atomically (write + rename), as editors and ConfigMap updates do.
  void WriteConfig(const std::string& text) {
    const std::string tmp = path_ + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << text;
      ASSERT_TRUE(out.good());
    }
    ASSERT_EQ(std::rename(tmp.c_str(), path_.c_str()), 0);
  }

  std::filesystem::path dir_;
  std::string path_;
  LoadRecorder recorder_;
};

TEST_F(PolicyFileWatcherTest, HotReloadsChangesAndKeepsLastGoodConfigOnError) {
  WriteConfig(ConfigWithAmount(1000));
  PolicyFileWatcher watcher(path_, absl::Milliseconds(10), recorder_.Callback());
  ASSERT_TRUE(watcher.Start().ok());
  ASSERT_EQ(recorder_.count(), 1u);  // Start() loads synchronously.
  EXPECT_EQ(recorder_.LatestAmount(), 1000u);

  WriteConfig(ConfigWithAmount(2000));
  ASSERT_TRUE(recorder_.AwaitLoads(2));
  EXPECT_EQ(recorder_.LatestAmount(), 2000u);
  EXPECT_EQ(watcher.last_error(), "");

  WriteConfig(ConfigWithAmount(3000, "weekly"));
  ASSERT_TRUE(Eventually([&] { return watcher.reload_failures() == 1; }));
  EXPECT_EQ(recorder_.count(), 2u);  // on_load not called: the previous config stays.
  EXPECT_EQ(recorder_.LatestAmount(), 2000u);
  EXPECT_THAT(watcher.last_error(),
              StartsWith(absl::StrCat(path_, ":5: policies[0].limits[0].window: unknown window")));
  EXPECT_EQ(watcher.reload_successes(), 2u);

  WriteConfig(ConfigWithAmount(4000));  // Fixing the file recovers.
  ASSERT_TRUE(recorder_.AwaitLoads(3));
  EXPECT_EQ(recorder_.LatestAmount(), 4000u);
  EXPECT_EQ(watcher.last_error(), "");
  EXPECT_EQ(watcher.reload_successes(), 3u);
  EXPECT_EQ(watcher.reload_failures(), 1u);
}

TEST_F(PolicyFileWatcherTest, StartReportsMissingFileAndPicksItUpWhenCreated) {
  PolicyFileWatcher watcher(path_, absl::Milliseconds(10), recorder_.Callback());
  const absl::Status status = watcher.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(watcher.last_error(), HasSubstr(path_));
  EXPECT_EQ(watcher.reload_failures(), 1u);
  EXPECT_EQ(recorder_.count(), 0u);

  WriteConfig(ConfigWithAmount(500));
  ASSERT_TRUE(recorder_.AwaitLoads(1));
  EXPECT_EQ(recorder_.LatestAmount(), 500u);
  EXPECT_EQ(watcher.last_error(), "");
}

TEST_F(PolicyFileWatcherTest, StartReturnsParseErrorOfBadFile) {
  WriteConfig(ConfigWithAmount(0));
  PolicyFileWatcher watcher(path_, absl::Milliseconds(10), recorder_.Callback());
  const absl::Status status = watcher.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr(":5: policies[0].limits[0].amount: "));
  EXPECT_EQ(recorder_.count(), 0u);
}

TEST_F(PolicyFileWatcherTest, ReloadNowRereadsUnchangedFile) {
  WriteConfig(ConfigWithAmount(1000));
  PolicyFileWatcher watcher(path_, absl::Hours(1), recorder_.Callback());
  ASSERT_TRUE(watcher.Start().ok());
  ASSERT_TRUE(watcher.ReloadNow().ok());
  EXPECT_EQ(recorder_.count(), 2u);
  EXPECT_EQ(watcher.reload_successes(), 2u);
}

TEST_F(PolicyFileWatcherTest, DestructorDoesNotWaitForThePollInterval) {
  WriteConfig(ConfigWithAmount(1000));
  const absl::Time start = absl::Now();
  {
    PolicyFileWatcher watcher(path_, absl::Hours(1), recorder_.Callback());
    ASSERT_TRUE(watcher.Start().ok());
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // A bound against hanging, not a timing.
}

}  // namespace
}  // namespace tokenmeter::aggregator
