#include "services/client/tokenmeter_client.h"

#include <algorithm>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "services/common/grpc_status.h"
#include "tokenmeter/v1/quota.grpc.pb.h"
#include "tokenmeter/v1/sidecar.grpc.pb.h"

namespace tokenmeter::client {
namespace internal {

// What every Client copy and every Reservation shares: one channel and its stubs.
class Connection {
 public:
  Connection(std::string target, ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : target_(std::move(target)),
        options_(options),
        channel_(std::move(channel)),
        report_(v1::ReportService::NewStub(channel_)),
        quota_(v1::QuotaService::NewStub(channel_)) {}

  const std::string& target() const { return target_; }
  grpc::Channel& channel() const { return *channel_; }
  v1::ReportService::Stub& report() const { return *report_; }
  v1::QuotaService::Stub& quota() const { return *quota_; }

  // Runs `attempt` (one RPC on the given context) until it succeeds, fails with a code that a
  // retry cannot fix, max_attempts are used, or the next pause would pass the deadline. Each
  // attempt gets a fresh context carrying the call's deadline. `method` names the call in
  // errors.
  absl::Status Call(const char* method,
                    absl::FunctionRef<grpc::Status(grpc::ClientContext*)> attempt) const;

 private:
  const std::string target_;
  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::ReportService::Stub> report_;
  const std::unique_ptr<v1::QuotaService::Stub> quota_;
};

}  // namespace internal

namespace {

using internal::Connection;

absl::BitGen& Rng() {
  thread_local absl::BitGen gen;
  return gen;
}

// The sidecar is unreachable (UNAVAILABLE) or its queue is full (RESOURCE_EXHAUSTED): the
// same request may succeed a moment later.
bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsResourceExhausted(s);
}

void ToProto(const TokenCounts& t, v1::TokenCounts* p) {
  p->set_input(t.input);
  p->set_cached_input(t.cached_input);
  p->set_output(t.output);
  p->set_reasoning(t.reasoning);
}

void ToProto(const Scope& s, v1::Scope* p) {
  p->set_tenant(s.tenant);
  p->set_team(s.team);
  p->set_user(s.user);
  p->set_api_key(s.api_key);
  p->set_provider(s.provider);
  p->set_model(s.model);
}

void ToProto(const Usage& u, absl::Time now, v1::UsageEvent* p) {
  p->set_event_id(u.event_id.empty() ? NewId() : u.event_id);
  p->set_tenant(u.tenant);
  p->set_team(u.team);
  p->set_user(u.user);
  p->set_api_key(u.api_key);
  p->set_application(u.application);
  p->set_provider(u.provider);
  p->set_model(u.model);
  ToProto(u.tokens, p->mutable_tokens());
  const absl::Time at = u.occurred_at.value_or(now);
  const int64_t seconds = absl::ToUnixSeconds(at);  // Floors, so nanos is never negative.
  p->mutable_occurred_at()->set_seconds(seconds);
  p->mutable_occurred_at()->set_nanos(
      static_cast<int32_t>((at - absl::FromUnixSeconds(seconds)) / absl::Nanoseconds(1)));
}

Metric FromProto(v1::Metric m) {
  switch (m) {
    case v1::METRIC_INPUT_TOKENS:
      return Metric::kInputTokens;
    case v1::METRIC_OUTPUT_TOKENS:
      return Metric::kOutputTokens;
    case v1::METRIC_TOTAL_TOKENS:
      return Metric::kTotalTokens;
    case v1::METRIC_REQUESTS:
      return Metric::kRequests;
    case v1::METRIC_COST_MICRO_USD:
      return Metric::kCostMicroUsd;
    default:
      return Metric::kUnknown;
  }
}

Window FromProto(v1::Window w) {
  switch (w) {
    case v1::WINDOW_MINUTE:
      return Window::kMinute;
    case v1::WINDOW_HOUR:
      return Window::kHour;
    case v1::WINDOW_DAY:
      return Window::kDay;
    case v1::WINDOW_MONTH:
      return Window::kMonth;
    default:
      return Window::kUnknown;
  }
}

Decision FromProto(const v1::QuotaDecision& p) {
  Decision d;
  d.allowed = p.result() == v1::QuotaDecision::ALLOWED;
  for (const v1::LimitStatus& l : p.limits()) {
    d.limits.push_back({l.policy_id(), l.scope(), FromProto(l.metric()), FromProto(l.window()),
                        l.mode() == v1::MODE_SHADOW, l.limit(), l.used(), l.outstanding(),
                        l.remaining(), l.requested(), l.exceeded(), l.warn_percent()});
  }
  d.retry_after = absl::Milliseconds(p.retry_after_ms());
  d.shadow_denied = p.shadow_denied();
  d.fallback = p.fallback();
  d.fallback_reason = p.fallback_reason();
  if (p.expires_at_unix_ms() != 0) d.expires_at = absl::FromUnixMillis(p.expires_at_unix_ms());
  return d;
}

absl::Status ReportEvents(const Connection& connection, const std::vector<Usage>& events) {
  if (events.empty()) return absl::OkStatus();
  if (events.size() > kMaxEventsPerReport) {
    return absl::InvalidArgumentError(absl::StrCat("events: at most ", kMaxEventsPerReport,
                                                   " per Report call, got ", events.size()));
  }
  // Built once, so every retry carries the same event_ids and timestamps.
  v1::ReportRequest request;
  const absl::Time now = absl::Now();
  for (const Usage& u : events) ToProto(u, now, request.add_events());
  v1::ReportResponse response;
  return connection.Call("Report", [&](grpc::ClientContext* context) {
    return connection.report().Report(context, request, &response);
  });
}

absl::Status ValidateOptions(const std::string& target, const ClientOptions& o) {
  if (target.empty() || target == "unix:") {
    return absl::InvalidArgumentError(
        "target: give \"unix:/path/to/sidecar.sock\" or \"127.0.0.1:<port>\"");
  }
  if (o.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("deadline: must be > 0");
  }
  if (o.max_attempts < 1) return absl::InvalidArgumentError("max_attempts: must be >= 1");
  if (o.initial_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("initial_backoff: must be >= 0");
  }
  if (o.max_reconnect_backoff < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError("max_reconnect_backoff: must be >= 1 ms");
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

absl::Status Connection::Call(const char* method,
                              absl::FunctionRef<grpc::Status(grpc::ClientContext*)> attempt) const {
  const absl::Time deadline = absl::Now() + options_.deadline;
  absl::Duration backoff = options_.initial_backoff;
  absl::Status status;
  int attempts = 0;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    context.set_wait_for_ready(options_.wait_for_ready);
    status = common::FromGrpcStatus(attempt(&context));
    ++attempts;
    if (status.ok() || !Retryable(status) || attempts >= options_.max_attempts) break;
    const absl::Duration pause = backoff * absl::Uniform(Rng(), 0.5, 1.0);
    if (absl::Now() + pause >= deadline) break;
    absl::SleepFor(pause);
    backoff *= 2;
  }
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("tokenmeter sidecar ", target_, ": ", method, ": ",
                                   std::string(status.message()),
                                   attempts > 1 ? absl::StrCat(" (", attempts, " attempts)") : ""));
}

}  // namespace internal

std::string NewId() {
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(Rng()),
                         absl::Uniform<uint64_t>(Rng()));
}

// --- Reservation -------------------------------------------------------------------------

Reservation::Reservation(std::shared_ptr<Connection> connection, std::string id, Scope scope,
                         Decision decision)
    : connection_(std::move(connection)),
      id_(std::move(id)),
      scope_(std::move(scope)),
      decision_(std::move(decision)),
      holds_(decision_.allowed) {}

Reservation::Reservation(Reservation&& other) noexcept
    : connection_(std::move(other.connection_)),
      id_(std::move(other.id_)),
      scope_(std::move(other.scope_)),
      decision_(std::move(other.decision_)),
      holds_(std::exchange(other.holds_, false)) {}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this == &other) return *this;
  ReleaseQuietly();
  connection_ = std::move(other.connection_);
  id_ = std::move(other.id_);
  scope_ = std::move(other.scope_);
  decision_ = std::move(other.decision_);
  holds_ = std::exchange(other.holds_, false);
  return *this;
}

Reservation::~Reservation() { ReleaseQuietly(); }

void Reservation::ReleaseQuietly() {
  if (holds_) (void)Release();  // On failure the shard expires the hold at its TTL.
}

absl::StatusOr<CommitResult> Reservation::Commit(const TokenCounts& actual) {
  if (connection_ == nullptr) return absl::FailedPreconditionError("reservation was moved from");
  if (!decision_.allowed) {
    return absl::FailedPreconditionError(
        absl::StrCat("reservation ", id_, " was denied: there is nothing to commit"));
  }
  CommitResult result;
  v1::CommitRequest request;
  request.set_reservation_id(id_);
  request.set_tenant(scope_.tenant);
  ToProto(actual, request.mutable_actual());
  v1::CommitResponse response;
  absl::Status s = connection_->Call("Commit", [&](grpc::ClientContext* context) {
    return connection_->quota().Commit(context, request, &response);
  });
  if (!s.ok()) return s;
  holds_ = false;
  result.reservation_was_open = response.reservation_was_open();
  result.duplicate = response.duplicate();
  result.queued = response.queued();
  return result;
}

absl::Status Reservation::Release() {
  if (!holds_) return absl::OkStatus();
  v1::ReleaseRequest request;
  request.set_reservation_id(id_);
  request.set_tenant(scope_.tenant);
  v1::ReleaseResponse response;
  absl::Status s = connection_->Call("Release", [&](grpc::ClientContext* context) {
    return connection_->quota().Release(context, request, &response);
  });
  if (s.ok()) holds_ = false;
  return s;
}

// --- Client ------------------------------------------------------------------------------

Client::Client(std::shared_ptr<Connection> connection) : connection_(std::move(connection)) {}

absl::StatusOr<Client> Client::Connect(const std::string& target, ClientOptions options) {
  if (absl::Status s = ValidateOptions(target, options); !s.ok()) return s;
  grpc::ChannelArguments args;
  const int max_backoff_ms =
      static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(options.max_reconnect_backoff),
                                         absl::ToInt64Milliseconds(absl::Hours(1))));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(100, max_backoff_ms));
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("target: cannot make a channel to ", target));
  }
  return Client(std::make_shared<Connection>(target, options, std::move(channel)));
}

absl::Status Client::Report(const std::vector<Usage>& events) const {
  return ReportEvents(*connection_, events);
}

absl::Status Client::Report(const Usage& event) const {
  return ReportEvents(*connection_, {event});
}

absl::StatusOr<Reservation> Client::Reserve(const ReserveRequest& request) const {
  v1::ReserveRequest proto;
  proto.set_reservation_id(request.reservation_id.empty() ? NewId() : request.reservation_id);
  ToProto(request.scope, proto.mutable_scope());
  ToProto(request.estimate, proto.mutable_estimate());
  if (request.ttl > absl::ZeroDuration()) {
    // Rounded up to whole milliseconds; the shard checks the range.
    const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(request.ttl, absl::Milliseconds(1)));
    proto.set_ttl_ms(static_cast<uint32_t>(std::min<int64_t>(ms, UINT32_MAX)));
  }
  v1::QuotaDecision response;
  absl::Status s = connection_->Call("Reserve", [&](grpc::ClientContext* context) {
    return connection_->quota().Reserve(context, proto, &response);
  });
  if (!s.ok()) return s;
  return Reservation(connection_, proto.reservation_id(), request.scope, FromProto(response));
}

absl::StatusOr<Decision> Client::Check(const Scope& scope, const TokenCounts& usage) const {
  v1::CheckRequest request;
  ToProto(scope, request.mutable_scope());
  ToProto(usage, request.mutable_usage());
  v1::QuotaDecision response;
  absl::Status s = connection_->Call("Check", [&](grpc::ClientContext* context) {
    return connection_->quota().Check(context, request, &response);
  });
  if (!s.ok()) return s;
  return FromProto(response);
}

absl::Status Client::WaitForReady(absl::Duration timeout) const {
  if (connection_->channel().WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(absl::StrCat("tokenmeter sidecar ", connection_->target(),
                                                  ": not connected after ",
                                                  absl::FormatDuration(timeout)));
}

const std::string& Client::target() const { return connection_->target(); }

}  // namespace tokenmeter::client
