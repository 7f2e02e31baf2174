#include "services/simulator/fleet.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tokenmeter::simulator {
namespace {

// Models of deploy/local/policies.yaml's price table.
const ModelChoice kGpt4o{"openai", "gpt-4o"};
const ModelChoice kGpt4oMini{"openai", "gpt-4o-mini"};
const ModelChoice kGpt41{"openai", "gpt-4.1"};
const ModelChoice kO4Mini{"openai", "o4-mini"};
const ModelChoice kOpus{"anthropic", "claude-opus-4-20250514"};
const ModelChoice kSonnet{"anthropic", "claude-sonnet-4-20250514"};
const ModelChoice kHaiku{"anthropic", "claude-3-5-haiku-20241022"};
const ModelChoice kGeminiPro{"gcp.gemini", "gemini-2.5-pro"};
const ModelChoice kGeminiFlash{"gcp.gemini", "gemini-2.5-flash"};

ModelChoice Weighted(const ModelChoice& m, int weight) {
  ModelChoice c = m;
  c.weight = weight;
  return c;
}

Team MakeTeam(std::string tenant, std::string team, Workload workload, int weight,
              const std::vector<std::string>& users, std::vector<ModelChoice> models) {
  Team t{std::move(tenant), std::move(team), workload, weight, {}, std::move(models)};
  for (const std::string& user : users) {
    t.members.push_back({user, absl::StrCat("k-", t.team, "-", user)});
  }
  return t;
}

uint64_t Uniform(Rng& rng, uint64_t lo, uint64_t hi) {
  return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
}

double Unit(Rng& rng) { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

// Reasoning models spend part of their output on hidden reasoning.
bool Reasons(const ModelChoice& m) {
  return m.model == "o4-mini" || absl::StrContains(m.model, "opus") ||
         absl::StrContains(m.model, "2.5-pro");
}

template <typename T>
const T& PickWeighted(Rng& rng, const std::vector<T>& items, int (*weight)(const T&)) {
  int total = 0;
  for (const T& item : items) total += weight(item);
  int x = static_cast<int>(Uniform(rng, 0, std::max(total, 1) - 1));
  for (const T& item : items) {
    x -= weight(item);
    if (x < 0) return item;
  }
  return items.back();
}

}  // namespace

Fleet DefaultFleet() {
  Fleet f;
  f.tenants = {"acme", "globex", "initech", "umbrella"};
  const Workload kChat = Workload::kChat;
  f.teams = {
      // The tokenmaxxing team: autonomous coding agents, run by service accounts.
      MakeTeam(
          "acme", "agents", Workload::kAgent, 0,
          {"coder-bot-1", "coder-bot-2", "coder-bot-3", "coder-bot-4"},
          {Weighted(kSonnet, 6), Weighted(kOpus, 1), Weighted(kGpt41, 2), Weighted(kO4Mini, 1)}),
      MakeTeam("acme", "research", kChat, 3, {"alice", "bob", "chen"},
               {Weighted(kGpt4o, 4), Weighted(kSonnet, 4), Weighted(kGeminiPro, 2)}),
      MakeTeam("acme", "support", kChat, 4, {"dana", "eve", "farid", "gita"},
               {Weighted(kGpt4oMini, 6), Weighted(kHaiku, 4)}),
      MakeTeam("acme", "web", kChat, 2, {"hiro", "ines"},
               {Weighted(kGpt4oMini, 1), Weighted(kGeminiFlash, 1)}),
      MakeTeam("globex", "data", kChat, 3, {"ivan", "jun", "kara", "lars", "mona", "nate"},
               {Weighted(kGpt41, 1), Weighted(kGeminiPro, 1)}),
      MakeTeam("globex", "platform", kChat, 3, {"lee", "mia", "nils", "oona", "paul", "rita"},
               {Weighted(kSonnet, 1), Weighted(kGpt4o, 1)}),
      MakeTeam("globex", "marketing", kChat, 2, {"omar", "pia", "quinn", "sven"},
               {Weighted(kGpt4oMini, 1), Weighted(kGeminiFlash, 1)}),
      MakeTeam("initech", "finance", kChat, 2, {"peter", "samir", "michael"},
               {Weighted(kGpt4o, 1), Weighted(kO4Mini, 1)}),
      MakeTeam("initech", "eng", kChat, 3, {"milton", "bill", "tom", "joanna"},
               {Weighted(kSonnet, 2), Weighted(kGpt41, 1), Weighted(kGeminiFlash, 1)}),
      MakeTeam("umbrella", "bio", kChat, 2, {"wesker", "carlos", "jill"},
               {Weighted(kOpus, 1), Weighted(kGeminiPro, 2), Weighted(kO4Mini, 1)}),
      MakeTeam("umbrella", "ops", kChat, 3, {"leon", "ada", "barry"},
               {Weighted(kGpt4oMini, 1), Weighted(kHaiku, 1)}),
      MakeTeam("umbrella", "legal", kChat, 1, {"claire"}, {Weighted(kSonnet, 1)}),
  };
  f.apps = {
      {"acme", "research", "svc-eval", "eval-harness", {kGpt4oMini, kHaiku}},
      {"globex", "data", "svc-etl", "etl-summarizer", {kGeminiFlash}},
      {"initech", "finance", "svc-batch", "batch-reconciler", {kGpt4oMini}},
      {"umbrella", "bio", "svc-lit", "literature-review", {kSonnet, kGeminiPro}},
  };
  return f;
}

void AssignSidecars(int sidecar_count, Fleet* fleet) {
  int next = 0;
  for (Team& team : fleet->teams) team.sidecar = next++ % sidecar_count;
  for (ReportOnlyApp& app : fleet->apps) app.sidecar = next++ % sidecar_count;
}

CallShape DrawChatCall(Rng& rng, const ModelChoice& model, double failure_rate) {
  static constexpr uint64_t kMaxTokens[] = {256, 512, 1024, 2048};
  CallShape c;
  c.estimate.input = Uniform(rng, 200, 4000);
  c.estimate.output = kMaxTokens[Uniform(rng, 0, 3)];
  c.actual.input = c.estimate.input;
  if (Unit(rng) < 0.4) c.actual.cached_input = c.actual.input * Uniform(rng, 0, 60) / 100;
  c.actual.output = std::max<uint64_t>(1, c.estimate.output * Uniform(rng, 10, 100) / 100);
  if (Reasons(model)) c.actual.reasoning = c.actual.output * Uniform(rng, 30, 70) / 100;
  c.latency = absl::Milliseconds(20 + Uniform(rng, 0, 30)) +
              absl::Microseconds(50 * static_cast<int64_t>(c.actual.output));
  c.fails = Unit(rng) < failure_rate;
  return c;
}

CallShape DrawAgentStep(Rng& rng, const ModelChoice& model, int step, double failure_rate) {
  CallShape c;
  const uint64_t context = std::min<uint64_t>(15000 + 12000 * static_cast<uint64_t>(step), 180000);
  c.estimate.input = context + Uniform(rng, 0, 3000);
  c.estimate.output = 16384;
  c.actual.input = c.estimate.input;
  // Everything but the newest tool output is a prompt-cache hit after the first step.
  if (step > 0) c.actual.cached_input = c.actual.input * Uniform(rng, 75, 95) / 100;
  c.actual.output = Uniform(rng, 1000, 8000);
  c.actual.reasoning = c.actual.output * (Reasons(model) ? Uniform(rng, 40, 70) : 0) / 100;
  c.latency = absl::Milliseconds(80 + Uniform(rng, 0, 60)) +
              absl::Microseconds(25 * static_cast<int64_t>(c.actual.output));
  c.fails = Unit(rng) < failure_rate;
  return c;
}

int DrawAgentLoopLength(Rng& rng) { return static_cast<int>(Uniform(rng, 8, 24)); }

Tokens DrawBatchTokens(Rng& rng) {
  Tokens t;
  t.input = Uniform(rng, 500, 3000);
  t.cached_input = t.input * Uniform(rng, 0, 50) / 100;
  t.output = Uniform(rng, 50, 600);
  return t;
}

const Team& PickChatTeam(Rng& rng, const std::vector<const Team*>& chat_teams) {
  return *PickWeighted<const Team*>(rng, chat_teams,
                                    [](const Team* const& t) { return t->weight; });
}

const ModelChoice& PickModel(Rng& rng, const std::vector<ModelChoice>& models) {
  return PickWeighted<ModelChoice>(rng, models, [](const ModelChoice& m) { return m.weight; });
}

const Member& PickMember(Rng& rng, const Team& team) {
  return team.members[Uniform(rng, 0, team.members.size() - 1)];
}

}  // namespace tokenmeter::simulator
