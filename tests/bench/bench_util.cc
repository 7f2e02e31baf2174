#include "tests/bench/bench_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tokenmeter::bench {

const std::vector<ModelRef>& Models() {
  static const std::vector<ModelRef> models = {
      {"openai", "gpt-4o-mini"},
      {"openai", "gpt-4o"},
      {"anthropic", "claude-sonnet-4-20250514"},
      {"anthropic", "claude-3-5-haiku-20241022"},
      {"gcp.gemini", "gemini-2.5-flash"},
  };
  return models;
}

const std::vector<Actor>& Actors() {
  static const std::vector<Actor> actors = [] {
    std::vector<Actor> out;
    out.reserve(kUsers);
    for (int u = 0; u < kUsers; ++u) {
      const int team = u % kTeams;
      const int tenant = team % kTenants;
      out.push_back({absl::StrFormat("tenant-%02d", tenant), absl::StrFormat("team-%02d", team),
                     absl::StrFormat("user-%04d@bench", u)});
    }
    return out;
  }();
  return actors;
}

const Actor& Workload::NextActor() {
  return Actors()[std::uniform_int_distribution<int>(0, kUsers - 1)(rng_)];
}

const ModelRef& Workload::NextModel() {
  // 40% / 25% / 15% / 10% / 10%: most traffic goes to the cheap models.
  static constexpr int kCumulative[] = {40, 65, 80, 90, 100};
  const int draw = std::uniform_int_distribution<int>(0, 99)(rng_);
  int i = 0;
  while (draw >= kCumulative[i]) ++i;
  return Models()[i];
}

TokenSample Workload::NextTokens() {
  TokenSample t;
  t.input = std::uniform_int_distribution<uint64_t>(200, 8000)(rng_);
  if (rng_() % 2 == 0) t.cached_input = t.input / 3;
  t.output = std::uniform_int_distribution<uint64_t>(50, 2000)(rng_);
  if (rng_() % 4 == 0) t.reasoning = t.output / 2;
  return t;
}

void FillUsageEvent(Workload& workload, const std::string& event_id, int64_t now_s,
                    v1::UsageEvent* e) {
  e->set_event_id(event_id);
  const Actor& actor = workload.NextActor();
  e->set_tenant(actor.tenant);
  e->set_team(actor.team);
  e->set_user(actor.user);
  e->set_application("bench-app");
  const ModelRef& model = workload.NextModel();
  e->set_provider(model.provider);
  e->set_model(model.model);
  const TokenSample t = workload.NextTokens();
  v1::TokenCounts* tokens = e->mutable_tokens();
  tokens->set_input(t.input);
  tokens->set_cached_input(t.cached_input);
  tokens->set_output(t.output);
  tokens->set_reasoning(t.reasoning);
  e->mutable_occurred_at()->set_seconds(now_s);
}

void LatencyRecorder::Add(absl::Duration d) {
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  absl::MutexLock lock(&mu_);
  nanos_.push_back(nanos);
}

void LatencyRecorder::AddUnfinished(int64_t count) {
  absl::MutexLock lock(&mu_);
  unfinished_ += count;
}

int64_t LatencyRecorder::count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(nanos_.size());
}

int64_t LatencyRecorder::unfinished() const {
  absl::MutexLock lock(&mu_);
  return unfinished_;
}

double LatencyRecorder::PercentileMs(double p) const {
  std::vector<int64_t> sorted;
  int64_t unfinished;
  {
    absl::MutexLock lock(&mu_);
    sorted = nanos_;
    unfinished = unfinished_;
  }
  const int64_t total = static_cast<int64_t>(sorted.size()) + unfinished;
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  // Nearest-rank percentile over finished + unfinished samples.
  int64_t rank = static_cast<int64_t>(std::ceil(p / 100.0 * static_cast<double>(total)));
  rank = std::clamp<int64_t>(rank, 1, total);
  if (rank > static_cast<int64_t>(sorted.size())) return std::numeric_limits<double>::infinity();
  std::nth_element(sorted.begin(), sorted.begin() + (rank - 1), sorted.end());
  return static_cast<double>(sorted[rank - 1]) / 1e6;
}

void PrintResult(const std::string& key, double value) {
  if (std::isnan(value)) {
    PrintResultText(key, "nan");
  } else if (std::isinf(value)) {
    PrintResultText(key, "inf");
  } else {
    PrintResultText(key, absl::StrFormat("%.3f", value));
  }
}

void PrintResultText(const std::string& key, const std::string& value) {
  std::printf("RESULT %s %s\n", key.c_str(), value.c_str());
  std::fflush(stdout);
}

void PrintQuotaPhase(const std::string& prefix, const QuotaPhaseReport& r) {
  const double p50 = r.latency->PercentileMs(50);
  const double p99 = r.latency->PercentileMs(99);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double reserve_p50 = r.reserve_latency ? r.reserve_latency->PercentileMs(50) : nan;
  const double reserve_p99 = r.reserve_latency ? r.reserve_latency->PercentileMs(99) : nan;
  std::printf(
      "%s quota %s: %lld pairs in %.2f s = %.0f pairs/s; pair latency p50 %.2f ms "
      "p99 %.2f ms (Reserve alone p50 %.3f ms p99 %.3f ms); %lld unfinished, %lld errors, "
      "%lld denied, %lld fallback\n",
      r.system.c_str(), r.phase.c_str(), static_cast<long long>(r.pairs), r.seconds,
      r.pairs / r.seconds, p50, p99, reserve_p50, reserve_p99,
      static_cast<long long>(r.latency->unfinished()), static_cast<long long>(r.errors),
      static_cast<long long>(r.denied), static_cast<long long>(r.fallback));
  if (!r.first_problem.empty()) std::printf("  first problem: %s\n", r.first_problem.c_str());
  const std::string p = absl::StrCat(prefix, ".", r.phase);
  PrintResult(p + "_pairs", static_cast<double>(r.pairs));
  PrintResult(p + "_pairs_per_s", r.pairs / r.seconds);
  PrintResult(p + "_p50_ms", p50);
  PrintResult(p + "_p99_ms", p99);
  PrintResult(p + "_reserve_p50_ms", reserve_p50);
  PrintResult(p + "_reserve_p99_ms", reserve_p99);
  PrintResult(p + "_unfinished", static_cast<double>(r.latency->unfinished()));
  PrintResult(p + "_errors", static_cast<double>(r.errors));
  PrintResult(p + "_denied", static_cast<double>(r.denied));
  PrintResult(p + "_fallback", static_cast<double>(r.fallback));
}

std::string LoadPhaseName(double fraction) {
  if (fraction == 0.5) return "half";
  return absl::StrCat("pct", std::lround(fraction * 100));
}

bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = address.substr(0, colon);
  return absl::SimpleAtoi(address.substr(colon + 1), port) && *port > 0 && *port < 65536;
}

}  // namespace tokenmeter::bench
