#include "services/simulator/traffic.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tokenmeter::simulator {
namespace {

void ToProto(const Tokens& t, v1::TokenCounts* proto) {
  proto->set_input(t.input);
  proto->set_cached_input(t.cached_input);
  proto->set_output(t.output);
  proto->set_reasoning(t.reasoning);
}

// The sidecar did not answer (or, for Report, its queue is full): the same call may succeed
// later, and repeating it is safe (idempotent by reservation_id / event_id).
bool Retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}
bool RetryableReport(const grpc::Status& s) {
  return Retryable(s) || s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

constexpr int kCloseAttempts = 3;
// Most events per Report call (sidecar.proto).
constexpr int kMaxEventsPerReport = 1000;

v1::UsageEvent ReportOnlyEvent(Rng& rng, const ReportOnlyApp& app, std::string event_id,
                               absl::Time now) {
  const ModelChoice& model = PickModel(rng, app.models);
  v1::UsageEvent e;
  e.set_event_id(std::move(event_id));
  e.set_tenant(app.tenant);
  e.set_team(app.team);
  e.set_user(app.user);
  e.set_application(app.application);
  e.set_provider(model.provider);
  e.set_model(model.model);
  ToProto(DrawBatchTokens(rng), e.mutable_tokens());
  e.mutable_occurred_at()->set_seconds(absl::ToUnixSeconds(now));
  return e;
}

}  // namespace

TrafficDriver::TrafficDriver(const Fleet* fleet,
                             const std::vector<std::shared_ptr<grpc::Channel>>& sidecars,
                             Stats* stats, TrafficOptions options)
    : fleet_(fleet), stats_(stats), options_(std::move(options)) {
  for (const std::shared_ptr<grpc::Channel>& channel : sidecars) {
    quota_stubs_.push_back(v1::QuotaService::NewStub(channel));
    report_stubs_.push_back(v1::ReportService::NewStub(channel));
  }
  for (const Team& t : fleet_->teams) {
    (t.workload == Workload::kAgent ? agent_teams_ : chat_teams_).push_back(&t);
  }
}

TrafficDriver::~TrafficDriver() { Stop(); }

void TrafficDriver::Start() {
  if (!chat_teams_.empty()) {
    for (int i = 0; i < options_.chat_workers; ++i)
      threads_.emplace_back([this, i] { ChatWorker(i); });
  }
  if (!agent_teams_.empty()) {
    for (int i = 0; i < options_.agent_workers; ++i) {
      const int worker = options_.chat_workers + i;
      threads_.emplace_back([this, worker] { AgentWorker(worker); });
    }
  }
  if (options_.report_rate > 0 && !fleet_->apps.empty()) {
    threads_.emplace_back([this] { ReportOnlyLoop(); });
  }
}

void TrafficDriver::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

bool TrafficDriver::Pause(absl::Duration d) { return !stop_.WaitForNotificationWithTimeout(d); }

std::unique_ptr<grpc::ClientContext> TrafficDriver::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  return context;
}

TrafficDriver::CallResult TrafficDriver::MakeCall(int worker, const Call& call,
                                                  absl::Duration* retry_after) {
  const std::string& tenant = call.team->tenant;
  v1::QuotaService::Stub& stub = *quota_stubs_[call.team->sidecar];
  v1::ReserveRequest reserve;
  reserve.set_reservation_id(absl::StrCat(options_.id_prefix, "-w", worker, "-", ++next_id_));
  v1::Scope* scope = reserve.mutable_scope();
  scope->set_tenant(tenant);
  scope->set_team(call.team->team);
  scope->set_user(call.member->user);
  scope->set_api_key(call.member->api_key);
  scope->set_provider(call.model->provider);
  scope->set_model(call.model->model);
  ToProto(call.shape.estimate, reserve.mutable_estimate());
  reserve.set_ttl_ms(call.ttl_ms);
  v1::QuotaDecision decision;
  grpc::Status status = stub.Reserve(NewContext().get(), reserve, &decision);
  if (!status.ok()) {
    stats_->RecordRpcError("Reserve", status);
    return CallResult::kError;
  }
  stats_->RecordDecision(tenant, call.team->team, decision, call.shape.estimate.total());
  if (decision.result() != v1::QuotaDecision::ALLOWED) {
    *retry_after = absl::Milliseconds(decision.retry_after_ms());
    return CallResult::kDenied;
  }
  absl::SleepFor(call.shape.latency);  // The LLM call itself; finished even when stopping.

  // Commit and Release are idempotent by reservation id, so transient errors are retried.
  for (int attempt = 1;; ++attempt) {
    status = CloseReservation(stub, call, reserve.reservation_id());
    if (status.ok()) return CallResult::kDone;
    stats_->RecordRpcError(call.shape.fails ? "Release" : "Commit", status);
    if (!Retryable(status) || attempt == kCloseAttempts) return CallResult::kError;
    absl::SleepFor(absl::Milliseconds(100 * attempt));
  }
}

grpc::Status TrafficDriver::CloseReservation(v1::QuotaService::Stub& stub, const Call& call,
                                             const std::string& reservation_id) {
  const std::string& tenant = call.team->tenant;
  grpc::Status status;
  if (call.shape.fails) {
    v1::ReleaseRequest release;
    release.set_reservation_id(reservation_id);
    release.set_tenant(tenant);
    v1::ReleaseResponse response;
    status = stub.Release(NewContext().get(), release, &response);
    if (status.ok()) stats_->RecordRelease(tenant, call.team->team);
  } else {
    v1::CommitRequest commit;
    commit.set_reservation_id(reservation_id);
    commit.set_tenant(tenant);
    ToProto(call.shape.actual, commit.mutable_actual());
    v1::CommitResponse response;
    status = stub.Commit(NewContext().get(), commit, &response);
    if (status.ok()) {
      stats_->RecordCommit(tenant, call.team->team, call.shape.actual.total(), response.queued());
    }
  }
  return status;
}

void TrafficDriver::ChatWorker(int worker) {
  Rng rng(options_.seed * 7919 + static_cast<uint64_t>(worker));
  absl::Duration retry_after;
  while (!stop_.HasBeenNotified()) {
    Call call;
    call.team = &PickChatTeam(rng, chat_teams_);
    call.member = &PickMember(rng, *call.team);
    call.model = &PickModel(rng, call.team->models);
    call.shape = DrawChatCall(rng, *call.model, options_.failure_rate);
    call.ttl_ms = options_.chat_ttl_ms;
    const CallResult result = MakeCall(worker, call, &retry_after);
    // Think time between calls (keeps the call rate about the same on fast and slow
    // machines); longer after an error.
    Pause(result == CallResult::kError
              ? absl::Milliseconds(200)
              : absl::Milliseconds(std::uniform_int_distribution<int>(20, 80)(rng)));
  }
}

void TrafficDriver::AgentWorker(int worker) {
  Rng rng(options_.seed * 7919 + static_cast<uint64_t>(worker));
  while (!stop_.HasBeenNotified()) {
    Call call;
    call.team =
        agent_teams_[std::uniform_int_distribution<size_t>(0, agent_teams_.size() - 1)(rng)];
    call.member = &PickMember(rng, *call.team);
    call.model = &PickModel(rng, call.team->models);  // One model per loop.
    call.ttl_ms = options_.agent_ttl_ms;
    const int steps = DrawAgentLoopLength(rng);
    for (int step = 0; step < steps && !stop_.HasBeenNotified(); ++step) {
      call.shape = DrawAgentStep(rng, *call.model, step, options_.failure_rate);
      absl::Duration retry_after;
      const CallResult result = MakeCall(worker, call, &retry_after);
      if (result == CallResult::kDenied) {
        // The loop is abandoned and the framework starts another one almost at once,
        // heeding the retry-after hint for at most 250 ms: a runaway agent.
        Pause(std::clamp(retry_after, absl::Milliseconds(50), absl::Milliseconds(250)));
        break;
      }
      if (result == CallResult::kError) {
        Pause(absl::Milliseconds(200));
        break;
      }
    }
  }
}

void TrafficDriver::ReportOnlyLoop() {
  Rng rng(options_.seed * 7919 + 100003);
  const absl::Duration tick = absl::Milliseconds(50);
  double owed = 0;
  uint64_t n = 0;
  std::vector<v1::ReportRequest> pending(report_stubs_.size());  // Per sidecar.
  while (Pause(tick)) {
    owed += options_.report_rate * absl::ToDoubleSeconds(tick);
    const absl::Time now = absl::Now();
    for (; owed >= 1; owed -= 1) {
      const ReportOnlyApp& app =
          fleet_->apps[std::uniform_int_distribution<size_t>(0, fleet_->apps.size() - 1)(rng)];
      v1::ReportRequest& request = pending[app.sidecar];
      *request.add_events() =
          ReportOnlyEvent(rng, app, absl::StrCat(options_.id_prefix, "-e", ++n), now);
      if (request.events_size() == kMaxEventsPerReport) {
        SendReport(app.sidecar, request);
        request.Clear();
      }
    }
    for (size_t sidecar = 0; sidecar < pending.size(); ++sidecar) {
      if (pending[sidecar].events_size() == 0) continue;
      SendReport(static_cast<int>(sidecar), pending[sidecar]);
      pending[sidecar].Clear();
    }
  }
}

void TrafficDriver::SendReport(int sidecar, const v1::ReportRequest& request) {
  // Bounded by report_attempts; the backoff is short (at most ~1.5 s in all by default).
  for (int attempt = 1;; ++attempt) {
    v1::ReportResponse response;
    const grpc::Status status =
        report_stubs_[sidecar]->Report(NewContext().get(), request, &response);
    if (status.ok()) {
      stats_->RecordReportAccepted(request);
      return;
    }
    stats_->RecordRpcError("Report", status);
    if (!RetryableReport(status) || attempt >= options_.report_attempts) {
      stats_->RecordReportFailed(request.events_size());
      return;
    }
    stats_->RecordReportRetry();
    absl::SleepFor(absl::Milliseconds(100 << std::min(attempt - 1, 3)));
  }
}

}  // namespace tokenmeter::simulator
