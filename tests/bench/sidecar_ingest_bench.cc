// End-to-end ingest benchmark: client -> sidecar -> shard, durable on both hops. `producers`
// client threads each keep `window` Report calls of `batch_events` events in flight (gRPC
// callback API); the sidecar answers a call after its events are fsynced into its local queue,
// then streams them to the shard, which acks after its own WAL fsync (--durability sync).
// Figures: accepted events/s at the sidecar, and end-to-end events/s: the accepted events over
// the time until the shard's UsageService counts every one of them (polled every 100 ms after
// the last Report was answered, at most `drain_time`).
#include <atomic>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tokenmeter/v1/sidecar.grpc.pb.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::bench {
namespace {

// Shared by the reporters: which call comes next, when to stop, and what happened.
struct ReportPlan {
  const RelayIngestOptions* options = nullptr;
  int64_t total_calls = 0;
  std::atomic<int64_t> next_call{0};
  absl::Time stop_at;
  LatencyRecorder latency;
  std::atomic<int64_t> accepted{0};
  std::atomic<int64_t> refused_calls{0};  // RESOURCE_EXHAUSTED: the local queue was full.
  std::atomic<int64_t> failed_calls{0};
  absl::Mutex mu;
  std::string first_problem ABSL_GUARDED_BY(mu);

  void Problem(const std::string& what) {
    absl::MutexLock lock(&mu);
    if (first_problem.empty()) first_problem = what;
  }
};

// One client thread: builds calls and keeps up to `window` of them in flight.
class Reporter {
 public:
  Reporter(int index, ReportPlan* plan, v1::ReportService::Stub* stub)
      : index_(index), plan_(plan), stub_(stub), workload_(index + 1000) {}

  // Sends calls until the plan is exhausted or its time is up, then waits for every answer.
  void Run();

 private:
  struct Call {
    grpc::ClientContext context;
    v1::ReportRequest request;
    v1::ReportResponse response;
    absl::Time sent;
  };
  void OnDone(Call* call, const grpc::Status& status);

  const int index_;
  ReportPlan* const plan_;
  v1::ReportService::Stub* const stub_;
  Workload workload_;
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

void Reporter::Run() {
  const int window = plan_->options->ingest.window;
  const int n = plan_->options->ingest.batch_events;
  for (int64_t seq = 1;; ++seq) {
    if (absl::Now() >= plan_->stop_at) break;
    if (plan_->next_call.fetch_add(1) >= plan_->total_calls) break;
    auto* call = new Call;
    const int64_t now_s = absl::ToUnixSeconds(absl::Now());
    for (int i = 0; i < n; ++i) {
      FillUsageEvent(workload_, absl::StrCat("s", index_, "-", seq, "-", i), now_s,
                     call->request.add_events());
    }
    {
      absl::MutexLock lock(&mu_);
      auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ < window; };
      mu_.Await(absl::Condition(&room));
      ++in_flight_;
    }
    call->sent = absl::Now();
    call->context.set_deadline(absl::ToChronoTime(call->sent + absl::Seconds(30)));
    stub_->async()->Report(&call->context, &call->request, &call->response,
                           [this, call](grpc::Status s) { OnDone(call, s); });
  }
  absl::MutexLock lock(&mu_);
  auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  mu_.Await(absl::Condition(&idle));  // Bounded: every call has a deadline.
}

void Reporter::OnDone(Call* call, const grpc::Status& status) {
  plan_->latency.Add(absl::Now() - call->sent);
  if (status.ok()) {
    plan_->accepted.fetch_add(call->response.accepted());
  } else {
    (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? plan_->refused_calls
                                                                 : plan_->failed_calls)
        .fetch_add(1);
    plan_->Problem(absl::StrCat("code ", status.error_code(), ": ", status.error_message()));
  }
  delete call;
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

// Events the shard has counted (requests at tenant level, all day windows around now).
absl::StatusOr<int64_t> CountedEvents(v1::UsageService::Stub& usage) {
  std::set<std::string> tenants;
  for (const Actor& a : Actors()) tenants.insert(a.tenant);
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  int64_t total = 0;
  for (const std::string& tenant : tenants) {
    v1::GetUsageRequest request;
    request.mutable_scope()->set_tenant(tenant);
    request.set_granularity(v1::GRANULARITY_DAY);
    request.mutable_from()->set_seconds(now_s - 2 * 86400);
    request.mutable_to()->set_seconds(now_s + 86400);
    v1::GetUsageResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    const grpc::Status s = usage.GetUsage(&context, request, &response);
    if (!s.ok()) return absl::UnavailableError(absl::StrCat("GetUsage: ", s.error_message()));
    for (const v1::UsagePoint& p : response.points()) total += p.totals().requests();
  }
  return total;
}

std::shared_ptr<grpc::Channel> Connect(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // One TCP connection per channel.
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
    std::fprintf(stderr, "cannot connect to %s\n", target.c_str());
    return nullptr;
  }
  return channel;
}

// Polls the shard until it counts `baseline + accepted` events or `until` passes; returns the
// last count (minus baseline) seen.
int64_t AwaitCounted(v1::UsageService::Stub& usage, int64_t baseline, int64_t accepted,
                     absl::Time until, ReportPlan& plan) {
  int64_t counted = 0;
  for (;;) {
    auto total = CountedEvents(usage);
    if (total.ok()) {
      counted = *total - baseline;
    } else {
      plan.Problem(std::string(total.status().message()));
    }
    if (counted >= accepted || absl::Now() >= until) return counted;
    absl::SleepFor(absl::Milliseconds(100));  // Each poll costs the shard 20 GetUsage calls.
  }
}

}  // namespace

int RunSidecarIngest(const RelayIngestOptions& options) {
  const IngestBenchOptions& o = options.ingest;
  auto shard = Connect(options.count_target);
  if (shard == nullptr) return 1;
  auto usage = v1::UsageService::NewStub(shard);
  auto baseline = CountedEvents(*usage);
  if (!baseline.ok()) {
    std::fprintf(stderr, "%s\n", std::string(baseline.status().message()).c_str());
    return 1;
  }
  std::vector<std::unique_ptr<v1::ReportService::Stub>> stubs;
  for (int i = 0; i < o.producers; ++i) {
    auto channel = Connect(o.target);
    if (channel == nullptr) return 1;
    stubs.push_back(v1::ReportService::NewStub(channel));
  }
  ReportPlan plan;
  plan.options = &options;
  plan.total_calls = (o.events + o.batch_events - 1) / o.batch_events;
  std::vector<std::unique_ptr<Reporter>> reporters;
  for (int i = 0; i < o.producers; ++i) {
    reporters.push_back(std::make_unique<Reporter>(i, &plan, stubs[i].get()));
  }
  const absl::Time start = absl::Now();
  plan.stop_at = start + o.max_time;
  std::vector<std::thread> threads;
  for (auto& r : reporters) threads.emplace_back([&r] { r->Run(); });
  for (std::thread& t : threads) t.join();
  const double accept_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t accepted = plan.accepted.load();
  const int64_t counted =
      AwaitCounted(*usage, *baseline, accepted, absl::Now() + options.drain_time, plan);
  const double e2e_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const bool drained = counted >= accepted;
  std::printf(
      "sidecar ingest: %lld events accepted in %.2f s by %d clients x window %d x %d "
      "events/call: %.0f events/s; Report p50 %.2f ms p99 %.2f ms\n",
      static_cast<long long>(accepted), accept_seconds, o.producers, o.window, o.batch_events,
      accepted / accept_seconds, plan.latency.PercentileMs(50), plan.latency.PercentileMs(99));
  std::printf("  shard counted %lld of them %s %.2f s after the start: %.0f events/s end to end\n",
              static_cast<long long>(counted), drained ? "by" : "(GAVE UP WAITING) at", e2e_seconds,
              counted / e2e_seconds);
  {
    absl::MutexLock lock(&plan.mu);
    if (!plan.first_problem.empty()) {
      std::printf("  problems: %lld calls refused (queue full), %lld failed; first: %s\n",
                  static_cast<long long>(plan.refused_calls.load()),
                  static_cast<long long>(plan.failed_calls.load()), plan.first_problem.c_str());
    }
  }
  const std::string& p = o.result_prefix;
  PrintResult(p + ".accepted", static_cast<double>(accepted));
  PrintResult(p + ".refused_calls", static_cast<double>(plan.refused_calls.load()));
  PrintResult(p + ".accept_seconds", accept_seconds);
  PrintResult(p + ".accepted_events_per_s", accepted / accept_seconds);
  PrintResult(p + ".call_p50_ms", plan.latency.PercentileMs(50));
  PrintResult(p + ".call_p99_ms", plan.latency.PercentileMs(99));
  PrintResult(p + ".counted", static_cast<double>(counted));
  PrintResult(p + ".e2e_seconds", e2e_seconds);
  PrintResult(p + ".drained", drained ? 1 : 0);
  PrintResult(p + ".e2e_events_per_s", counted / e2e_seconds);
  return 0;
}

}  // namespace tokenmeter::bench
