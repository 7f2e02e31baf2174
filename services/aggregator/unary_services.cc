#include "services/aggregator/unary_services.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "services/aggregator/proto_convert.h"
#include "services/common/grpc_status.h"
#include "services/common/validation.h"

namespace tokenmeter::aggregator {
namespace {

// Most calls waiting for a worker; past it calls are shed with UNAVAILABLE (retry with backoff)
// instead of queueing without bound behind an overloaded shard.
constexpr size_t kMaxQueuedCalls = 4096;

// Runs `fn` (returning absl::Status, filling the response) on the pool, then finishes the call.
// A call whose client gave up (cancelled, or deadline passed) while it waited is not run: a
// Reserve nobody waits for would hold budget until its TTL.
template <typename Fn>
grpc::ServerUnaryReactor* RunOnPool(grpc::CallbackServerContext* context, common::WorkerPool* pool,
                                    Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const bool queued = pool->TrySubmit(
      [context, reactor, fn = std::move(fn)]() mutable {
        if (context->IsCancelled()) {
          reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued"));
          return;
        }
        if (context->deadline() <= std::chrono::system_clock::now()) {
          reactor->Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                       "deadline passed while queued; not executed"));
          return;
        }
        reactor->Finish(common::ToGrpcStatus(fn()));
      },
      kMaxQueuedCalls);
  if (!queued) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                 "shard overloaded: too many calls queued; retry with backoff"));
  }
  return reactor;
}

absl::Time TimeOr(const google::protobuf::Timestamp& t, absl::Time fallback) {
  if (t.seconds() == 0 && t.nanos() == 0) return fallback;
  return TimeFromProto(t.seconds(), t.nanos());
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  out->set_seconds(absl::ToUnixSeconds(t));
}

absl::StatusOr<storage::Granularity> GranularityFromProto(v1::Granularity g) {
  switch (g) {
    case v1::GRANULARITY_TEN_SECONDS:
      return storage::Granularity::kTenSeconds;
    case v1::GRANULARITY_HOUR:
      return storage::Granularity::kHour;
    case v1::GRANULARITY_DAY:
      return storage::Granularity::kDay;
    case v1::GRANULARITY_MONTH:
      return storage::Granularity::kMonth;
    default:
      return absl::InvalidArgumentError("granularity: required");
  }
}

absl::Duration NominalWindow(storage::Granularity g) {
  switch (g) {
    case storage::Granularity::kTenSeconds:
      return absl::Seconds(10);
    case storage::Granularity::kHour:
      return absl::Hours(1);
    case storage::Granularity::kDay:
      return absl::Hours(24);
    case storage::Granularity::kMonth:
      return absl::Hours(24 * 31);
  }
  return absl::Hours(1);
}

void TotalsToProto(const storage::CounterRecord& r, v1::UsageTotals* out) {
  out->set_input_tokens(r[storage::kInputTokens]);
  out->set_cached_input_tokens(r[storage::kCachedInputTokens]);
  out->set_output_tokens(r[storage::kOutputTokens]);
  out->set_reasoning_tokens(r[storage::kReasoningTokens]);
  out->set_total_tokens(r[storage::kInputTokens] + r[storage::kOutputTokens]);
  out->set_requests(r[storage::kRequests]);
  out->set_cost_micro_usd(r[storage::kCostMicroUsd]);
  out->set_unpriced_requests(r[storage::kUnpricedRequests]);
}

}  // namespace

grpc::ServerUnaryReactor* QuotaService::Check(grpc::CallbackServerContext* context,
                                              const v1::CheckRequest* request,
                                              v1::QuotaDecision* response) {
  return RunOnPool(context, pool_, [=, this] {
    auto d = engine_->Check(FromProto(request->scope()), FromProto(request->usage()));
    if (d.ok()) DecisionToProto(*d, response);
    return d.status();
  });
}

grpc::ServerUnaryReactor* QuotaService::Reserve(grpc::CallbackServerContext* context,
                                                const v1::ReserveRequest* request,
                                                v1::QuotaDecision* response) {
  return RunOnPool(context, pool_, [=, this] {
    auto d =
        engine_->Reserve(request->reservation_id(), FromProto(request->scope()),
                         FromProto(request->estimate()), absl::Milliseconds(request->ttl_ms()));
    if (d.ok()) DecisionToProto(*d, response);
    return d.status();
  });
}

grpc::ServerUnaryReactor* QuotaService::Commit(grpc::CallbackServerContext* context,
                                               const v1::CommitRequest* request,
                                               v1::CommitResponse* response) {
  return RunOnPool(context, pool_, [=, this] {
    auto outcome =
        engine_->Commit(request->tenant(), request->reservation_id(), FromProto(request->actual()));
    if (!outcome.ok()) return outcome.status();
    response->set_reservation_was_open(outcome->reservation_was_open);
    response->set_duplicate(outcome->duplicate);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuotaService::Release(grpc::CallbackServerContext* context,
                                                const v1::ReleaseRequest* request,
                                                v1::ReleaseResponse* response) {
  return RunOnPool(context, pool_, [=, this] {
    auto was_open = engine_->Release(request->tenant(), request->reservation_id());
    if (!was_open.ok()) return was_open.status();
    response->set_reservation_was_open(*was_open);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* UsageService::GetUsage(grpc::CallbackServerContext* context,
                                                 const v1::GetUsageRequest* request,
                                                 v1::GetUsageResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    auto g = GranularityFromProto(request->granularity());
    if (!g.ok()) return g.status();
    const v1::Scope& s = request->scope();
    const storage::ScopeKey scope{s.tenant(), s.team(), s.user(), s.api_key(), s.model()};
    // Defaults: up to now (inclusive of the current window), the last 100 windows.
    const absl::Time to = TimeOr(request->to(), clock_->Now() + absl::Seconds(1));
    const absl::Time from = TimeOr(request->from(), to - 100 * NominalWindow(*g));
    auto points = reader_->GetUsage(scope, *g, from, to, request->time_zone());
    if (!points.ok()) return points.status();
    for (const UsagePoint& p : *points) {
      v1::UsagePoint* out = response->add_points();
      SetTimestamp(p.window_start, out->mutable_window_start());
      TotalsToProto(p.totals, out->mutable_totals());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* UsageService::TopSpenders(grpc::CallbackServerContext* context,
                                                    const v1::TopSpendersRequest* request,
                                                    v1::TopSpendersResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    auto g = GranularityFromProto(request->granularity());
    if (!g.ok()) return g.status();
    SpenderLevel level;
    switch (request->level()) {
      case v1::LEVEL_TEAM:
        level = SpenderLevel::kTeam;
        break;
      case v1::LEVEL_USER:
        level = SpenderLevel::kUser;
        break;
      case v1::LEVEL_API_KEY:
        level = SpenderLevel::kApiKey;
        break;
      case v1::LEVEL_MODEL:
        level = SpenderLevel::kModel;
        break;
      default:
        return absl::InvalidArgumentError("level: required");
    }
    absl::Time window_start;
    auto spenders = reader_->TopSpenders(
        request->tenant(), level, MetricFromProto(request->metric()).value_or(Metric::kTotalTokens),
        *g, TimeOr(request->at(), clock_->Now()), request->time_zone(),
        request->limit() == 0 ? 10 : request->limit(), &window_start);
    if (!spenders.ok()) return spenders.status();
    SetTimestamp(window_start, response->mutable_window_start());
    for (const Spender& sp : *spenders) {
      v1::Spender* out = response->add_spenders();
      auto* scope = out->mutable_scope();
      scope->set_tenant(sp.scope.tenant);
      scope->set_team(sp.scope.team);
      scope->set_user(sp.scope.user);
      scope->set_api_key(sp.scope.api_key);
      scope->set_model(sp.scope.model);
      out->set_value(sp.value);
      TotalsToProto(sp.totals, out->mutable_totals());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::UpsertPolicy(grpc::CallbackServerContext* context,
                                                     const v1::UpsertPolicyRequest* request,
                                                     v1::UpsertPolicyResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    auto policy = FromProto(request->policy());
    if (!policy.ok()) return policy.status();
    if (policy->selector.tenant != "*" && !policy->selector.tenant.empty()) {
      if (absl::Status s = shard_.CheckOwner(policy->selector.tenant); !s.ok()) return s;
    }
    return registry_->UpsertOverride(*std::move(policy));
  });
}

grpc::ServerUnaryReactor* AdminService::ListPolicies(grpc::CallbackServerContext* context,
                                                     const v1::ListPoliciesRequest* request,
                                                     v1::ListPoliciesResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    if (!request->tenant().empty()) {
      if (absl::Status s = common::ValidateId(common::IdKind::kTenant, "tenant", request->tenant());
          !s.ok()) {
        return s;
      }
      if (absl::Status s = shard_.CheckOwner(request->tenant()); !s.ok()) return s;
    }
    const std::vector<Policy> policies = request->tenant().empty()
                                             ? registry_->AllPolicies()
                                             : *registry_->PoliciesFor(request->tenant());
    for (const Policy& p : policies) ToProto(p, response->add_policies());
    response->set_last_reload_error(reload_error_());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::DeletePolicy(grpc::CallbackServerContext* context,
                                                     const v1::DeletePolicyRequest* request,
                                                     v1::DeletePolicyResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    if (absl::Status s = shard_.CheckOwner(request->tenant()); !s.ok()) return s;
    auto existed = registry_->DeleteOverride(request->tenant(), request->id());
    if (!existed.ok()) return existed.status();
    response->set_existed(*existed);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::SetPrices(grpc::CallbackServerContext* context,
                                                  const v1::SetPricesRequest* request,
                                                  v1::SetPricesResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    std::vector<ModelPrice> prices;
    for (const v1::Price& p : request->prices()) prices.push_back(FromProto(p));
    auto table = PriceTable::Create(request->version(), std::move(prices));
    if (!table.ok()) return table.status();
    return registry_->SetPrices(*std::move(table));
  });
}

grpc::ServerUnaryReactor* AdminService::GetPrices(grpc::CallbackServerContext* context,
                                                  const v1::GetPricesRequest* request,
                                                  v1::GetPricesResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    const auto table = registry_->Prices();
    response->set_version(table->version());
    for (const ModelPrice& p : table->prices()) ToProto(p, response->add_prices());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::ListDeadLetters(grpc::CallbackServerContext* context,
                                                        const v1::ListDeadLettersRequest* request,
                                                        v1::ListDeadLettersResponse* response) {
  return RunOnPool(context, pool_, [=, this]() -> absl::Status {
    const uint32_t limit = request->limit() == 0 ? 100 : request->limit();
    if (limit > 1000) return absl::InvalidArgumentError("limit: must be 0..1000");
    auto letters = reader_->ListDeadLetters(request->tenant(), limit);
    if (!letters.ok()) return letters.status();
    for (v1::DeadLetter& l : *letters) *response->add_dead_letters() = std::move(l);
    return absl::OkStatus();
  });
}

}  // namespace tokenmeter::aggregator
