// Small pieces shared by the benchmark drivers of tokenmeter-bench: a latency recorder with
// percentiles, the synthetic workload (tenants, teams, users, models, token counts), and the
// one output format every driver prints.
//
// Output format: human-readable lines, then one "RESULT <key> <value>" line per figure, which
// tests/bench/run.sh collects into its summary table. Benchmarks print figures; they do not
// pass or fail (the exit code is non-zero only if the driver itself could not run).
//
// Thread-safety: LatencyRecorder is thread-safe; Workload is thread-compatible (one per thread).
#ifndef TOKENMETER_TESTS_BENCH_BENCH_UTIL_H_
#define TOKENMETER_TESTS_BENCH_BENCH_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tokenmeter/v1/event.pb.h"

namespace tokenmeter::bench {

// Shape of the synthetic organisation: user u belongs to team u % kTeams, team t to tenant
// t % kTenants (so every tenant has 2-3 teams and 100 users).
inline constexpr int kTenants = 20;
inline constexpr int kTeams = 50;
inline constexpr int kUsers = 2000;

struct Actor {
  std::string tenant;
  std::string team;
  std::string user;
};

struct ModelRef {
  const char* provider;
  const char* model;
};

struct TokenSample {
  uint64_t input = 0;
  uint64_t cached_input = 0;
  uint64_t output = 0;
  uint64_t reasoning = 0;
};

// The 5 models of the workload (all priced in tests/bench/policies.yaml).
const std::vector<ModelRef>& Models();
// The kUsers actors, index = user number.
const std::vector<Actor>& Actors();

// Draws actors (uniform over users), models (skewed to the cheap ones, as fleets are) and
// token counts (prompt 200..8000, a third of it cached half the time, output 50..2000).
class Workload {
 public:
  explicit Workload(uint64_t seed) : rng_(seed) {}
  const Actor& NextActor();
  const ModelRef& NextModel();
  TokenSample NextTokens();

 private:
  std::mt19937_64 rng_;
};

// Fills `e` with the next event of `workload` (actor, model, tokens), occurred at `now_s`.
void FillUsageEvent(Workload& workload, const std::string& event_id, int64_t now_s,
                    v1::UsageEvent* e);

// Collects latency samples; Percentile() sorts a copy.
class LatencyRecorder {
 public:
  void Add(absl::Duration d);
  // Adds `count` samples of work that never finished before the driver gave up; they sort
  // after every finished sample (as +infinity).
  void AddUnfinished(int64_t count);
  int64_t count() const;
  int64_t unfinished() const;
  // The p-th percentile (0 < p <= 100) in milliseconds; +infinity if it falls among the
  // unfinished samples, NaN if there are no samples.
  double PercentileMs(double p) const;

 private:
  mutable absl::Mutex mu_;
  std::vector<int64_t> nanos_ ABSL_GUARDED_BY(mu_);
  int64_t unfinished_ ABSL_GUARDED_BY(mu_) = 0;
};

// Prints "RESULT <key> <value>" (value with up to 3 decimals; "inf" / "nan" as such).
void PrintResult(const std::string& key, double value);
void PrintResultText(const std::string& key, const std::string& value);

// What one phase of a quota benchmark did, and how it is printed.
struct QuotaPhaseReport {
  std::string system;  // "tokenmeter" or "redis".
  std::string phase;   // "saturation" or "paced".
  int64_t pairs = 0;   // Reserve+Commit pairs completed.
  int64_t denied = 0;  // Reserves denied (never expected: the limits are far away).
  int64_t errors = 0;  // Calls that failed or timed out.
  // Reserves a sidecar answered from its failure mode (shard too slow or down): counted as
  // unfinished, since no shard decided them.
  int64_t fallback = 0;
  double seconds = 0;
  const LatencyRecorder* latency = nullptr;
  // Reserve alone: from the pair's intended start to the Reserve answer.
  const LatencyRecorder* reserve_latency = nullptr;
  std::string first_problem;
};
// Prints the phase as a line plus RESULT <prefix>.<phase>_{pairs,pairs_per_s,p50_ms,p99_ms,
// reserve_p50_ms,reserve_p99_ms,unfinished,errors,denied,fallback}.
void PrintQuotaPhase(const std::string& prefix, const QuotaPhaseReport& report);

// The name of the quota phase paced at `fraction` of the saturation rate: "half" for 0.5, else
// "pct<N>" (N = percent, rounded), e.g. "pct10".
std::string LoadPhaseName(double fraction);

// Splits "host:port"; false if malformed.
bool SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace tokenmeter::bench

#endif  // TOKENMETER_TESTS_BENCH_BENCH_UTIL_H_
