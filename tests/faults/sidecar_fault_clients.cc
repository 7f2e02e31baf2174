#include "tests/faults/sidecar_fault_clients.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "tokenmeter/v1/sidecar.grpc.pb.h"

namespace tokenmeter::faults {
namespace {

// Attempts of one call at most (the deadline usually ends them first).
constexpr int kMaxAttempts = 2000;
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(20);
constexpr char kCodeNames[17][20] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Codes that say the call's outcome is unknown or transient: send the same request again.
bool Retryable(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::INTERNAL:  // A stream reset by a dying server.
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return true;
    default:
      return false;
  }
}

enum class Outcome { kAcked, kRejected, kFailed };

}  // namespace

std::string Render(const Totals& t) {
  return absl::StrCat("requests=", t.requests, " input=", t.input, " cached_input=", t.cached_input,
                      " output=", t.output, " reasoning=", t.reasoning);
}

void Ledger::Add(const std::vector<v1::UsageEvent>& events) {
  absl::MutexLock lock(&mu_);
  for (const v1::UsageEvent& e : events) {
    if (!ids_.insert(absl::StrCat(e.tenant(), "/", e.event_id())).second) continue;
    Totals& t = totals_[e.tenant()];
    t.input += e.tokens().input();
    t.cached_input += e.tokens().cached_input();
    t.output += e.tokens().output();
    t.reasoning += e.tokens().reasoning();
    ++t.requests;
  }
}

std::map<std::string, Totals> Ledger::Expected(const std::vector<std::string>& tenants) const {
  absl::MutexLock lock(&mu_);
  std::map<std::string, Totals> expected;
  for (const std::string& tenant : tenants) {
    auto it = totals_.find(tenant);
    expected[tenant] = it == totals_.end() ? Totals() : it->second;
  }
  return expected;
}

uint64_t Ledger::events() const {
  absl::MutexLock lock(&mu_);
  return ids_.size();
}

std::string ClientStats::FailureSummary() const {
  std::string out;
  for (int code = 1; code < 17; ++code) {
    if (const uint64_t n = failures_by_code[code].load(); n > 0) {
      absl::StrAppend(&out, out.empty() ? "" : " ", kCodeNames[code], "=", n);
    }
  }
  return out.empty() ? "none" : out;
}

void ClientStats::RecordError(const std::string& error) {
  absl::MutexLock lock(&mu_);
  if (errors_.size() < 20) errors_.push_back(error);
}

std::vector<std::string> ClientStats::Errors() const {
  absl::MutexLock lock(&mu_);
  return errors_;
}

void ClientStats::RecordFullMessage(const std::string& message) {
  absl::MutexLock lock(&mu_);
  if (full_message_.empty()) full_message_ = message;
}

std::string ClientStats::FullMessage() const {
  absl::MutexLock lock(&mu_);
  return full_message_;
}

ClientFleet::~ClientFleet() { StopAndJoin(); }

void ClientFleet::Start() {
  ok_ = std::make_unique<std::atomic<bool>[]>(options_.clients);
  for (int i = 0; i < options_.clients; ++i) {
    threads_.emplace_back([this, i] { ok_[i] = RunClient(i); });
  }
}

bool ClientFleet::StopAndJoin() {
  keep_going_ = false;
  bool ok = true;
  for (size_t i = 0; i < threads_.size(); ++i) {
    if (threads_[i].joinable()) threads_[i].join();
    ok = ok && ok_[i].load();
  }
  return ok;
}

namespace {

// One client's calls: a stub and the rules of FleetOptions.
class Client {
 public:
  Client(int index, const FleetOptions& options, ClientStats* stats)
      : index_(index),
        options_(options),
        stats_(stats),
        prefix_hash_(SplitMix64(std::hash<std::string>()(options.id_prefix))),
        rng_(SplitMix64(index)) {
    grpc::ChannelArguments args;
    // Reconnect quickly to a restarted sidecar (gRPC's default backoff grows to 120 s).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    stub_ = v1::ReportService::NewStub(
        grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args));
  }

  v1::ReportRequest MakeRequest(uint64_t first_event) const;
  // Sends `request` until it gets a final answer (see the header).
  Outcome Deliver(const v1::ReportRequest& request, bool may_give_up);

 private:
  const int index_;
  const FleetOptions& options_;
  ClientStats* const stats_;
  const uint64_t prefix_hash_;  // Each fleet's events differ.
  std::mt19937_64 rng_;
  std::unique_ptr<v1::ReportService::Stub> stub_;
};

v1::ReportRequest Client::MakeRequest(uint64_t first_event) const {
  v1::ReportRequest request;
  const int64_t now_ns = absl::ToUnixNanos(absl::Now());
  for (int i = 0; i < options_.events_per_call; ++i) {
    const uint64_t k = first_event + i;
    const uint64_t h = SplitMix64(prefix_hash_ ^ (static_cast<uint64_t>(index_) << 40) ^ k);
    v1::UsageEvent* e = request.add_events();
    e->set_event_id(absl::StrCat(options_.id_prefix, "c", index_, "-e", k));
    e->set_tenant(options_.tenants[h % options_.tenants.size()]);
    e->set_team(absl::StrCat("team-", (h >> 8) % 3));
    e->set_user(absl::StrCat("user-", (h >> 12) % 5));
    e->set_provider("openai");
    e->set_model("gpt-4o");
    const uint64_t input = 1 + (h >> 20) % 4096;
    const uint64_t output = 1 + (h >> 36) % 2048;
    e->mutable_tokens()->set_input(input);
    e->mutable_tokens()->set_cached_input(input * ((h >> 32) % 4) / 4);
    e->mutable_tokens()->set_output(output);
    e->mutable_tokens()->set_reasoning(output * ((h >> 48) % 3) / 3);
    e->mutable_occurred_at()->set_seconds(now_ns / 1'000'000'000);
    e->mutable_occurred_at()->set_nanos(static_cast<int32_t>(now_ns % 1'000'000'000));
  }
  return request;
}

Outcome Client::Deliver(const v1::ReportRequest& request, bool may_give_up) {
  absl::Duration backoff = kFirstBackoff;
  bool ambiguous = false;  // An earlier attempt may have been queued.
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
    v1::ReportResponse response;
    const grpc::Status status = stub_->Report(&context, request, &response);
    if (status.ok()) {
      if (response.accepted() != static_cast<uint32_t>(request.events_size())) {
        stats_->RecordError(absl::StrCat("accepted ", response.accepted(), " of ",
                                         request.events_size(), " events on OK"));
      }
      stats_->calls_ok.fetch_add(1);
      stats_->last_ok_unix_ns.store(absl::ToUnixNanos(absl::Now()));
      return Outcome::kAcked;
    }
    stats_->calls_failed.fetch_add(1);
    stats_->failures_by_code[std::clamp(static_cast<int>(status.error_code()), 0, 16)]++;
    const bool full = status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    if (full) {
      stats_->calls_full.fetch_add(1);
      stats_->RecordFullMessage(status.error_message());
      if (may_give_up) {
        if (ambiguous) stats_->ambiguous_rejects.fetch_add(1);
        return Outcome::kRejected;
      }
    } else {
      ambiguous = true;
    }
    if (!Retryable(status.error_code()) || absl::Now() + backoff > options_.deadline) {
      stats_->RecordError(
          absl::StrCat("client ", index_, ": call of ", request.events(0).event_id(),
                       " unanswered: ", status.error_code(), " ", status.error_message()));
      return Outcome::kFailed;
    }
    absl::SleepFor(backoff * std::uniform_real_distribution<double>(0.5, 1.0)(rng_));
    backoff = std::min(backoff * 2, options_.max_backoff);
    stats_->calls_resent.fetch_add(1);
  }
  stats_->RecordError(absl::StrCat("client ", index_, ": out of attempts"));
  return Outcome::kFailed;
}

}  // namespace

bool ClientFleet::RunClient(int index) {
  Client client(index, options_, stats_);
  const absl::Time start = absl::Now();
  uint64_t made = 0;
  int calls = 0;
  std::optional<v1::ReportRequest> last_acked;
  const auto wants_more = [&] {
    return made < options_.max_events_per_client &&
           (made < options_.min_events_per_client || keep_going_.load());
  };
  while (wants_more()) {
    if (absl::Now() > options_.deadline) {
      stats_->RecordError(absl::StrCat("client ", index, ": deadline passed after ", made,
                                       " events (minimum ", options_.min_events_per_client, ")"));
      return false;
    }
    if (options_.events_per_second > 0) {  // Pacing, not synchronisation.
      const absl::Time due = start + absl::Seconds(made / options_.events_per_second);
      absl::SleepFor(std::min(due, options_.deadline) - absl::Now());
    }
    if (options_.resend_every > 0 && last_acked && ++calls % options_.resend_every == 0) {
      if (client.Deliver(*last_acked, false) != Outcome::kAcked) return false;
      stats_->events_reported_again.fetch_add(last_acked->events_size());
    }
    v1::ReportRequest request = client.MakeRequest(made);
    made += request.events_size();
    switch (client.Deliver(request, options_.give_up_on_full)) {
      case Outcome::kAcked:
        ledger_->Add({request.events().begin(), request.events().end()});
        stats_->events_acked.fetch_add(request.events_size());
        for (const v1::UsageEvent& e : request.events()) stats_->bytes_acked += e.ByteSizeLong();
        last_acked = std::move(request);
        break;
      case Outcome::kRejected:
        stats_->events_rejected.fetch_add(request.events_size());
        break;
      case Outcome::kFailed:
        return false;
    }
  }
  return true;
}

}  // namespace tokenmeter::faults
