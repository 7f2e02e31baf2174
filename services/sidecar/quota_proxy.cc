#include "services/sidecar/quota_proxy.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "services/aggregator/proto_convert.h"
#include "services/common/log.h"
#include "tokenmeter/v1/admin.grpc.pb.h"

namespace tokenmeter::sidecar {
namespace {

// Errors that mean "the shard did not answer", as opposed to an answer that says no.
bool Unreachable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// A local storage error answers UNAVAILABLE: the caller retries with the same ids.
grpc::Status OkOrUnavailable(const absl::Status& s) {
  return s.ok() ? grpc::Status::OK
                : grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
}

std::shared_ptr<grpc::ClientContext> ContextWithDeadline(absl::Duration d) {
  auto context = std::make_shared<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d));
  return context;
}

}  // namespace

PolicyCache::PolicyCache(const ShardChannels* shards, aggregator::FailureMode default_mode,
                         absl::Duration refresh_interval)
    : shards_(shards),
      default_mode_(default_mode),
      refresh_interval_(refresh_interval),
      thread_([this] { RefreshLoop(); }) {}

PolicyCache::~PolicyCache() {
  stop_.Notify();
  thread_.join();
}

void PolicyCache::Note(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  policies_.try_emplace(tenant, nullptr);
}

aggregator::FailureMode PolicyCache::ModeFor(const aggregator::RequestScope& scope) {
  std::shared_ptr<const std::vector<aggregator::Policy>> policies;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = policies_.try_emplace(scope.tenant, nullptr);
    policies = it->second;  // nullptr until the refresh thread fetched them.
  }
  if (policies == nullptr) return default_mode_;
  for (const aggregator::MatchedLimit& m : aggregator::MatchLimits(*policies, scope)) {
    if (m.policy->mode == aggregator::Mode::kEnforce &&
        m.policy->failure_mode == aggregator::FailureMode::kClosed) {
      return aggregator::FailureMode::kClosed;
    }
  }
  return aggregator::FailureMode::kOpen;
}

void PolicyCache::Fetch(const std::string& tenant) {
  v1::AdminService::Stub stub(shards_->channel(shards_->OwnerOf(tenant)));
  v1::ListPoliciesRequest request;
  request.set_tenant(tenant);
  v1::ListPoliciesResponse response;
  auto context = ContextWithDeadline(absl::Seconds(2));
  if (!stub.ListPolicies(context.get(), request, &response).ok()) return;  // Keep the old.
  auto policies = std::make_shared<std::vector<aggregator::Policy>>();
  for (const v1::Policy& p : response.policies()) {
    auto policy = aggregator::FromProto(p);
    if (policy.ok()) policies->push_back(*std::move(policy));
  }
  absl::MutexLock lock(&mu_);
  policies_[tenant] = std::move(policies);
}

void PolicyCache::RefreshLoop() {
  absl::Time last_full = absl::Now();
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(200))) {
    const bool full = absl::Now() - last_full > refresh_interval_;
    std::vector<std::string> due;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [tenant, policies] : policies_) {
        if (full || policies == nullptr) due.push_back(tenant);
      }
    }
    for (const std::string& tenant : due) Fetch(tenant);
    if (full) last_full = absl::Now();
  }
}

QuotaProxy::QuotaProxy(const ShardChannels* shards, LocalQueue* queue, PolicyCache* policies,
                       common::WorkerPool* pool, absl::Duration deadline)
    : shards_(shards), queue_(queue), policies_(policies), pool_(pool), deadline_(deadline) {
  for (int i = 0; i < shards->size(); ++i) {
    stubs_.push_back(v1::QuotaService::NewStub(shards->channel(i)));
  }
}

std::shared_ptr<grpc::ClientContext> QuotaProxy::ForwardContext(
    const grpc::CallbackServerContext* caller) {
  auto context = std::make_shared<grpc::ClientContext>();
  auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline_);
  deadline = std::min(deadline, caller->deadline() - std::chrono::milliseconds(5));
  context->set_deadline(deadline);
  return context;
}

absl::Status CommitFallbackReservation(LocalQueue* queue, const ShardChannels* shards,
                                       const v1::CommitRequest& request, bool* converted) {
  *converted = false;
  auto stored = queue->TakeFallbackReservation(request.tenant(), request.reservation_id());
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return absl::OkStatus();
  v1::Scope scope;
  if (!scope.ParseFromString(**stored))
    return absl::DataLossError("unparsable fallback reservation");
  v1::UsageEvent event;
  event.set_event_id(request.reservation_id());
  event.set_tenant(scope.tenant());
  event.set_team(scope.team());
  event.set_user(scope.user());
  event.set_api_key(scope.api_key());
  event.set_provider(scope.provider());
  event.set_model(scope.model());
  *event.mutable_tokens() = request.actual();
  event.mutable_occurred_at()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  if (absl::Status s =
          queue->Append({{shards->OwnerOf(scope.tenant()), event.SerializeAsString()}});
      !s.ok()) {
    return s;
  }
  *converted = true;
  return absl::OkStatus();
}

v1::QuotaService::Stub* QuotaProxy::StubFor(const std::string& tenant, int* shard) {
  *shard = shards_->OwnerOf(tenant);
  counters_.forwarded.fetch_add(1, std::memory_order_relaxed);
  return stubs_[*shard].get();
}

grpc::Status QuotaProxy::Fallback(const v1::Scope& scope, const grpc::Status& error, int shard,
                                  v1::QuotaDecision* response) {
  const aggregator::FailureMode mode = policies_->ModeFor(aggregator::FromProto(scope));
  response->Clear();
  const bool open = mode == aggregator::FailureMode::kOpen;
  response->set_result(open ? v1::QuotaDecision::ALLOWED : v1::QuotaDecision::DENIED);
  response->set_fallback(true);
  response->set_fallback_reason(absl::StrCat(
      "shard ", shard, " (", shards_->target(shard), ") unreachable: ", error.error_message(),
      "; policy failure mode is ", open ? "open" : "closed"));
  (open ? counters_.fallback_allowed : counters_.fallback_denied)
      .fetch_add(1, std::memory_order_relaxed);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* QuotaProxy::Check(grpc::CallbackServerContext* context,
                                            const v1::CheckRequest* request,
                                            v1::QuotaDecision* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  int shard;
  policies_->Note(request->scope().tenant());
  auto client = ForwardContext(context);
  StubFor(request->scope().tenant(), &shard)
      ->async()
      ->Check(client.get(), request, response, [=, this](grpc::Status s) {
        (void)client;
        if (Unreachable(s)) s = Fallback(request->scope(), s, shard, response);
        reactor->Finish(s);
      });
  return reactor;
}

grpc::ServerUnaryReactor* QuotaProxy::Reserve(grpc::CallbackServerContext* context,
                                              const v1::ReserveRequest* request,
                                              v1::QuotaDecision* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  int shard;
  policies_->Note(request->scope().tenant());
  auto client = ForwardContext(context);
  StubFor(request->scope().tenant(), &shard)
      ->async()
      ->Reserve(client.get(), request, response, [=, this](grpc::Status s) {
        (void)client;
        if (!Unreachable(s)) {
          reactor->Finish(s);
          return;
        }
        s = Fallback(request->scope(), s, shard, response);
        if (response->result() != v1::QuotaDecision::ALLOWED) {
          reactor->Finish(s);
          return;
        }
        // Allowed without the shard: remember it durably so its Commit still counts.
        pool_->Submit([=, this] {
          const absl::Status stored =
              queue_->PutFallbackReservation(request->scope().tenant(), request->reservation_id(),
                                             request->scope().SerializeAsString());
          reactor->Finish(OkOrUnavailable(stored));
        });
      });
  return reactor;
}

grpc::ServerUnaryReactor* QuotaProxy::Commit(grpc::CallbackServerContext* context,
                                             const v1::CommitRequest* request,
                                             v1::CommitResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  int shard;
  auto client = ForwardContext(context);
  StubFor(request->tenant(), &shard)
      ->async()
      ->Commit(client.get(), request, response, [=, this](grpc::Status s) {
        (void)client;
        if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
          pool_->Submit([=, this] {  // Perhaps a fallback reservation: count it as an event.
            bool converted = false;
            const absl::Status c = CommitFallbackReservation(queue_, shards_, *request, &converted);
            if (converted) {
              response->Clear();
              response->set_queued(true);
            }
            reactor->Finish(!c.ok() || converted ? OkOrUnavailable(c) : s);
          });
          return;
        }
        if (!Unreachable(s)) {
          reactor->Finish(s);
          return;
        }
        Defer(reactor, kDeferredCommit, request->SerializeAsString(), [response](bool stored) {
          response->Clear();
          response->set_queued(stored);
        });
      });
  return reactor;
}

grpc::ServerUnaryReactor* QuotaProxy::Release(grpc::CallbackServerContext* context,
                                              const v1::ReleaseRequest* request,
                                              v1::ReleaseResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  int shard;
  auto client = ForwardContext(context);
  StubFor(request->tenant(), &shard)
      ->async()
      ->Release(client.get(), request, response, [=, this](grpc::Status s) {
        (void)client;
        if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
          pool_->Submit([=, this] {  // A fallback reservation has nothing to release.
            auto taken =
                queue_->TakeFallbackReservation(request->tenant(), request->reservation_id());
            if (taken.ok() && taken->has_value()) {
              response->set_reservation_was_open(true);
              reactor->Finish(grpc::Status::OK);
            } else {
              reactor->Finish(s);
            }
          });
          return;
        }
        if (!Unreachable(s)) {
          reactor->Finish(s);
          return;
        }
        Defer(reactor, kDeferredRelease, request->SerializeAsString(),
              [response](bool) { response->Clear(); });
      });
  return reactor;
}

void QuotaProxy::Defer(grpc::ServerUnaryReactor* reactor, uint8_t kind, std::string payload,
                       std::function<void(bool stored)> fill_response) {
  pool_->Submit([=, this] {  // The deferred write fsyncs: not on a gRPC thread.
    const absl::Status stored = queue_->AddDeferred(kind, payload);
    counters_.deferred.fetch_add(1, std::memory_order_relaxed);
    fill_response(stored.ok());
    reactor->Finish(OkOrUnavailable(stored));
  });
}

DeferredCallRetrier::DeferredCallRetrier(const ShardChannels* shards, LocalQueue* queue,
                                         absl::Duration interval)
    : shards_(shards), queue_(queue), interval_(interval), thread_([this] {
        while (!stop_.WaitForNotificationWithTimeout(interval_)) RunOnce();
      }) {}

DeferredCallRetrier::~DeferredCallRetrier() {
  stop_.Notify();
  thread_.join();
}

int DeferredCallRetrier::RunOnce() {
  // Fallback reservations never committed within a day are abandoned (their TTL is <= 1 h).
  queue_->DropFallbackReservationsBefore(absl::Now() - absl::Hours(24)).IgnoreError();
  auto calls = queue_->ListDeferred(256);
  if (!calls.ok()) return 0;
  int done = 0;
  for (const LocalQueue::Deferred& call : *calls) {
    grpc::Status s;
    auto context = ContextWithDeadline(absl::Seconds(2));
    if (call.kind == kDeferredCommit) {
      v1::CommitRequest request;
      request.ParseFromString(call.payload);
      v1::CommitResponse response;
      s = v1::QuotaService::NewStub(shards_->channel(shards_->OwnerOf(request.tenant())))
              ->Commit(context.get(), request, &response);
    } else {
      v1::ReleaseRequest request;
      request.ParseFromString(call.payload);
      v1::ReleaseResponse response;
      s = v1::QuotaService::NewStub(shards_->channel(shards_->OwnerOf(request.tenant())))
              ->Release(context.get(), request, &response);
    }
    if (Unreachable(s)) continue;  // Still down: try again later.
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      bool converted = false;
      if (call.kind == kDeferredCommit) {
        v1::CommitRequest request;
        request.ParseFromString(call.payload);
        if (!CommitFallbackReservation(queue_, shards_, request, &converted).ok()) continue;
      } else {
        v1::ReleaseRequest request;
        request.ParseFromString(call.payload);
        auto taken = queue_->TakeFallbackReservation(request.tenant(), request.reservation_id());
        converted = taken.ok() && taken->has_value();
      }
      if (converted) s = grpc::Status::OK;
    }
    if (!s.ok()) {
      common::Log(common::LogLevel::kWarn, "deferred quota call refused by the shard; dropped",
                  {{"code", absl::StrCat(s.error_code())}, {"error", s.error_message()}});
    }
    if (queue_->RemoveDeferred(call.id).ok()) ++done;
  }
  return done;
}

}  // namespace tokenmeter::sidecar
