// tokenmeter quota benchmark: Reserve then Commit ("a pair", what a gateway does around one LLM
// call) over the gRPC callback API. Saturation: a fixed number of pairs always in flight.
// Paced: open-loop arrivals at a fixed rate, latency from each pair's intended start (so a
// stalled server is charged for the pairs it delayed: no coordinated omission).
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tokenmeter/v1/quota.grpc.pb.h"

namespace tokenmeter::bench {
namespace {

// One phase: owns the stubs' view, the counters and the pairs in flight.
class QuotaPhase {
 public:
  QuotaPhase(const std::vector<std::unique_ptr<v1::QuotaService::Stub>>* stubs, uint64_t seed,
             std::string id_prefix)
      : stubs_(stubs), workload_(seed), id_prefix_(std::move(id_prefix)) {}

  // Starts a pair meant to start at `intended`; its calls fail after `deadline`. `again` says
  // whether a finished pair starts a successor (closed loop) while now < stop_at.
  void StartPair(absl::Time intended, absl::Time deadline, bool again);
  // Waits until no pair is in flight (bounded: every call has a deadline).
  void WaitIdle();
  // Waits until fewer than `limit` pairs are in flight or `until` passes; false on timeout.
  bool WaitForSlot(int limit, absl::Time until);

  void set_stop_at(absl::Time t) { stop_at_ = t; }
  LatencyRecorder& latency() { return latency_; }
  LatencyRecorder& reserve_latency() { return reserve_latency_; }
  QuotaPhaseReport Report(const std::string& phase, double seconds);

 private:
  struct Pair {
    absl::Time intended;
    absl::Time deadline;
    bool again = false;
    v1::QuotaService::Stub* stub = nullptr;
    grpc::ClientContext reserve_context;
    v1::ReserveRequest reserve;
    v1::QuotaDecision decision;
    grpc::ClientContext commit_context;
    v1::CommitRequest commit;
    v1::CommitResponse committed;
  };
  void OnReserved(Pair* pair, const grpc::Status& status);
  void Finish(Pair* pair, bool completed, const grpc::Status& status);

  const std::vector<std::unique_ptr<v1::QuotaService::Stub>>* const stubs_;
  absl::Time stop_at_ = absl::InfinitePast();
  LatencyRecorder latency_;
  LatencyRecorder reserve_latency_;
  std::atomic<int64_t> pairs_{0};
  std::atomic<int64_t> denied_{0};
  std::atomic<int64_t> fallback_{0};
  std::atomic<int64_t> errors_{0};
  absl::Mutex mu_;
  Workload workload_ ABSL_GUARDED_BY(mu_);
  const std::string id_prefix_;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::string first_problem_ ABSL_GUARDED_BY(mu_);
};

void QuotaPhase::StartPair(absl::Time intended, absl::Time deadline, bool again) {
  auto* pair = new Pair;
  pair->intended = intended;
  pair->deadline = deadline;
  pair->again = again;
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    const int64_t n = next_id_++;
    pair->stub = (*stubs_)[n % stubs_->size()].get();
    const Actor& actor = workload_.NextActor();
    const ModelRef& model = workload_.NextModel();
    pair->reserve.set_reservation_id(absl::StrCat(id_prefix_, n));
    v1::Scope* scope = pair->reserve.mutable_scope();
    scope->set_tenant(actor.tenant);
    scope->set_team(actor.team);
    scope->set_user(actor.user);
    scope->set_provider(model.provider);
    scope->set_model(model.model);
  }
  pair->reserve.mutable_estimate()->set_input(1000);
  pair->reserve.mutable_estimate()->set_output(500);
  pair->reserve.set_ttl_ms(60'000);
  pair->reserve_context.set_deadline(absl::ToChronoTime(deadline));
  pair->stub->async()->Reserve(&pair->reserve_context, &pair->reserve, &pair->decision,
                               [this, pair](grpc::Status s) { OnReserved(pair, s); });
}

void QuotaPhase::OnReserved(Pair* pair, const grpc::Status& status) {
  if (!status.ok()) {
    reserve_latency_.AddUnfinished(1);
    return Finish(pair, false, status);
  }
  if (pair->decision.fallback()) {  // A sidecar answered for an unreachable shard.
    fallback_.fetch_add(1);
    reserve_latency_.AddUnfinished(1);
    latency_.AddUnfinished(1);
    {
      absl::MutexLock lock(&mu_);
      if (first_problem_.empty()) first_problem_ = "fallback: " + pair->decision.fallback_reason();
    }
    return Finish(pair, false, grpc::Status::OK);
  }
  reserve_latency_.Add(absl::Now() - pair->intended);
  if (pair->decision.result() != v1::QuotaDecision::ALLOWED) {
    denied_.fetch_add(1);
    return Finish(pair, false, grpc::Status::OK);
  }
  pair->commit.set_reservation_id(pair->reserve.reservation_id());
  pair->commit.set_tenant(pair->reserve.scope().tenant());
  pair->commit.mutable_actual()->set_input(1000);
  pair->commit.mutable_actual()->set_output(400);
  pair->commit_context.set_deadline(absl::ToChronoTime(pair->deadline));
  pair->stub->async()->Commit(&pair->commit_context, &pair->commit, &pair->committed,
                              [this, pair](grpc::Status s) { Finish(pair, s.ok(), s); });
}

void QuotaPhase::Finish(Pair* pair, bool completed, const grpc::Status& status) {
  if (completed) {
    latency_.Add(absl::Now() - pair->intended);
    pairs_.fetch_add(1);
  } else if (!status.ok()) {
    errors_.fetch_add(1);
    latency_.AddUnfinished(1);
  }
  const bool again = pair->again && absl::Now() < stop_at_;
  const absl::Duration timeout = pair->deadline - pair->intended;
  delete pair;
  if (again) {  // Before this pair leaves in_flight_, so WaitIdle() cannot see 0 in between.
    const absl::Time now = absl::Now();
    StartPair(now, now + timeout, true);
  }
  absl::MutexLock lock(&mu_);
  if (!status.ok() && first_problem_.empty()) {
    first_problem_ = absl::StrCat("code ", status.error_code(), ": ", status.error_message());
  }
  --in_flight_;
}

void QuotaPhase::WaitIdle() {
  absl::MutexLock lock(&mu_);
  auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  mu_.Await(absl::Condition(&idle));
}

bool QuotaPhase::WaitForSlot(int limit, absl::Time until) {
  absl::MutexLock lock(&mu_);
  auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ < limit; };
  return mu_.AwaitWithDeadline(absl::Condition(&room), until);
}

QuotaPhaseReport QuotaPhase::Report(const std::string& phase, double seconds) {
  QuotaPhaseReport r;
  r.system = "tokenmeter";
  r.phase = phase;
  r.pairs = pairs_.load();
  r.denied = denied_.load();
  r.fallback = fallback_.load();
  r.errors = errors_.load();
  r.seconds = seconds;
  r.latency = &latency_;
  r.reserve_latency = &reserve_latency_;
  absl::MutexLock lock(&mu_);
  r.first_problem = first_problem_;
  return r;
}

// Returns the pairs/s reached.
double RunSaturation(const QuotaBenchOptions& options, QuotaPhase& phase) {
  const absl::Time start = absl::Now();
  phase.set_stop_at(start + options.saturation_time);
  for (int i = 0; i < options.in_flight; ++i) {
    phase.StartPair(start, start + absl::Seconds(10), /*again=*/true);
  }
  phase.WaitIdle();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const QuotaPhaseReport report = phase.Report("saturation", seconds);
  PrintQuotaPhase(options.result_prefix, report);
  return report.pairs / seconds;
}

void RunPaced(const QuotaBenchOptions& options, const std::string& name, double rate,
              absl::Duration length, QuotaPhase& phase) {
  const absl::Time start = absl::Now();
  const absl::Time end = start + length;
  const absl::Time deadline = end + options.drain_time;
  const absl::Duration interval = absl::Seconds(1) / rate;
  int64_t planned = 0;
  int64_t started = 0;
  for (absl::Time intended = start; intended < end; intended += interval, ++planned) {
    const absl::Duration early = intended - absl::Now();
    if (early > absl::ZeroDuration()) absl::SleepFor(early);
    if (!phase.WaitForSlot(options.max_paced_in_flight, deadline)) continue;
    phase.StartPair(intended, deadline, /*again=*/false);
    ++started;
  }
  // Never got a slot before the deadline.
  phase.latency().AddUnfinished(planned - started);
  phase.reserve_latency().AddUnfinished(planned - started);
  phase.WaitIdle();
  std::printf("tokenmeter quota %s: offered %.0f pairs/s for %.1f s (%lld planned, %lld started)\n",
              name.c_str(), rate, absl::ToDoubleSeconds(length), static_cast<long long>(planned),
              static_cast<long long>(started));
  PrintResult(absl::StrCat(options.result_prefix, ".", name, "_rate"), rate);
  // Throughput of the paced phase over the offered period plus whatever drain it needed.
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  PrintQuotaPhase(options.result_prefix, phase.Report(name, seconds));
}

}  // namespace

int RunTokenmeterQuota(const QuotaBenchOptions& options) {
  std::vector<std::unique_ptr<v1::QuotaService::Stub>> stubs;
  for (int i = 0; i < options.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // One TCP connection per channel.
    auto channel =
        grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
      std::fprintf(stderr, "cannot connect to %s\n", options.target.c_str());
      return 1;
    }
    stubs.push_back(v1::QuotaService::NewStub(channel));
  }
  const std::string nonce = absl::StrCat(absl::ToUnixMillis(absl::Now()));
  double saturated = 0;
  {
    QuotaPhase phase(&stubs, options.seed, absl::StrCat("bench-", nonce, "-s-"));
    saturated = RunSaturation(options, phase);
  }
  // Fractional load before the fixed rate: an overloaded fixed-rate phase can leave the server
  // with a backlog of abandoned calls that would distort whatever runs next.
  if (options.half_load_time > absl::ZeroDuration() && saturated > 0) {
    QuotaPhase phase(&stubs, options.seed + 2, absl::StrCat("bench-", nonce, "-h-"));
    RunPaced(options, LoadPhaseName(options.load_fraction), saturated * options.load_fraction,
             options.half_load_time, phase);
  }
  {
    QuotaPhase phase(&stubs, options.seed + 1, absl::StrCat("bench-", nonce, "-p-"));
    RunPaced(options, "paced", options.rate, options.paced_time, phase);
  }
  return 0;
}

}  // namespace tokenmeter::bench
