// The simulated fleet: tenants, their teams, users, API keys and model mixes, and the shapes
// of the LLM calls they make. Chat teams make single calls of a few thousand tokens; the
// "tokenmaxxing" team (acme/agents) runs agentic loops whose context grows step by step, each
// loop burning 100-1000x the tokens of a chat call. Report-only applications (batch jobs
// that are metered but not gated) report their usage through a sidecar's ReportService.
// Every team and every report-only app is one service (a pod) with its own sidecar: see
// AssignSidecars.
//
// The tenants, teams and models match deploy/local/policies.yaml (whose price table covers
// every model used here). Plain values and pure functions of the given RNG; thread-compatible.
#ifndef TOKENMETER_SERVICES_SIMULATOR_FLEET_H_
#define TOKENMETER_SERVICES_SIMULATOR_FLEET_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace tokenmeter::simulator {

struct ModelChoice {
  std::string provider;
  std::string model;
  int weight = 1;
};

struct Member {
  std::string user;
  std::string api_key;
};

enum class Workload { kChat, kAgent };

struct Team {
  std::string tenant;
  std::string team;
  Workload workload = Workload::kChat;
  // Relative share of chat calls among chat teams (agent teams run on their own workers).
  int weight = 1;
  std::vector<Member> members;
  std::vector<ModelChoice> models;
  // Index of the sidecar this team's calls go through (AssignSidecars).
  int sidecar = 0;
};

// A batch application whose usage is only reported (ReportService), never gated.
struct ReportOnlyApp {
  std::string tenant;
  std::string team;
  std::string user;
  std::string application;
  std::vector<ModelChoice> models;
  // Index of the sidecar this app reports to (AssignSidecars).
  int sidecar = 0;
};

struct Fleet {
  std::vector<std::string> tenants;  // In report order.
  std::vector<Team> teams;
  std::vector<ReportOnlyApp> apps;
};

// acme (with the agents team), globex, initech and umbrella; every service on sidecar 0.
Fleet DefaultFleet();

// Gives every service of `fleet` one of `sidecar_count` (> 0) sidecars, the way pods each have
// their own: dealt round-robin in fleet order, teams first, then report-only apps. The same
// fleet and count always give the same assignment.
void AssignSidecars(int sidecar_count, Fleet* fleet);

// Token counts by type; cached_input <= input, reasoning <= output.
struct Tokens {
  uint64_t input = 0;
  uint64_t cached_input = 0;
  uint64_t output = 0;
  uint64_t reasoning = 0;
  uint64_t total() const { return input + output; }
};

// One simulated LLM call: what is reserved (prompt + max_tokens), what it really used, how
// long it takes, and whether it fails (then it is released, not committed).
struct CallShape {
  Tokens estimate;
  Tokens actual;
  absl::Duration latency;
  bool fails = false;
};

using Rng = std::mt19937_64;

// A chat call: 200..4000 prompt tokens, max_tokens 256..2048.
CallShape DrawChatCall(Rng& rng, const ModelChoice& model, double failure_rate);

// Step `step` (0-based) of an agentic loop: the context grows ~12k tokens per step up to
// 180k, most of it served from the prompt cache; max_tokens 16384.
CallShape DrawAgentStep(Rng& rng, const ModelChoice& model, int step, double failure_rate);

// How many steps one agentic loop runs: 8..24.
int DrawAgentLoopLength(Rng& rng);

// A report-only event's tokens (a batch job's call).
Tokens DrawBatchTokens(Rng& rng);

// Weighted picks. The vectors must not be empty.
const Team& PickChatTeam(Rng& rng, const std::vector<const Team*>& chat_teams);
const ModelChoice& PickModel(Rng& rng, const std::vector<ModelChoice>& models);
const Member& PickMember(Rng& rng, const Team& team);

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_FLEET_H_
