// tokenmeter client: what an AI service links to talk to its local tokenmeter-sidecar.
//
// A Client holds one gRPC channel to the sidecar (a unix socket or loopback TCP), made once by
// Connect() and reused by every call. It offers:
//  - Report(usage): after an LLM call, record what it consumed. OK means the sidecar has the
//    events durably queued; they will be counted exactly once at the tenant's shard.
//  - Reserve(estimate) -> Reservation: before a call, hold budget. The Reservation is a
//    scope guard: Commit(actual) records the real usage; if it is destroyed without Commit
//    (the call threw or failed) it releases the hold.
//  - Check(scope, usage): would this fit now? Changes nothing.
//
// A budget denial is an answer, not an error: Reserve and Check return OK with
// allowed() == false, the limits that said no and a retry-after hint:
//
//   auto r = client.Reserve({.scope = scope, .estimate = {.input = prompt, .output = max}});
//   if (!r.ok()) return r.status();                       // sidecar unreachable, bad request
//   if (!r->allowed()) return TooManyTokens(r->retry_after());
//   auto result = CallTheModel(...);                       // on failure: ~Reservation releases
//   if (!result.ok()) return result.status();
//   return r->Commit({.input = result->input_tokens, .output = result->output_tokens}).status();
//
// Deadlines and retries: every call, retries included, ends within ClientOptions::deadline
// (plus scheduling noise). Every sidecar call is idempotent (events by event_id, reservations
// by reservation_id, Check changes nothing), so a call failing with UNAVAILABLE (sidecar not
// reachable) or RESOURCE_EXHAUSTED (sidecar queue full) is retried with the same ids, up to
// ClientOptions::max_attempts, with jittered exponential backoff, while the deadline allows.
//
// Errors (absl::Status, canonical codes): UNAVAILABLE = the sidecar could not be reached;
// DEADLINE_EXCEEDED = no answer within the deadline (a Report may still have been queued:
// repeat it with the same event_ids); INVALID_ARGUMENT = a malformed request, the message
// names the field ("events[3].model: ..."); RESOURCE_EXHAUSTED = the sidecar's queue is full.
// Everything else is passed through from the sidecar as it is.
//
// When the tenant's shard is down, the sidecar answers Reserve/Check from the policy's failure
// mode (decision().fallback == true) and queues Commit/Release durably (CommitResult::queued).
//
// Thread-safety: Client is thread-safe; share one per process. Copies share the channel. A
// Reservation is thread-compatible: one owner at a time (move it, do not share it).
#ifndef TOKENMETER_SERVICES_CLIENT_TOKENMETER_CLIENT_H_
#define TOKENMETER_SERVICES_CLIENT_TOKENMETER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenmeter::client {

namespace internal {
class Connection;  // The channel, the stubs and the retry loop (tokenmeter_client.cc).
}  // namespace internal

// Most events per Report call (the sidecar's limit).
inline constexpr size_t kMaxEventsPerReport = 1000;

// The option and value structs below are aggregates meant for designated initializers
// ({.tenant = "acme", .team = "search"}); every member has a default member initializer, so
// skipping fields compiles cleanly under -Wextra (GCC's -Wmissing-field-initializers).

// Token counts by type, as the providers report them: `cached_input` is the part of `input`
// served from a prompt cache, `reasoning` the part of `output` spent on hidden reasoning.
// Total tokens = input + output.
struct TokenCounts {
  uint64_t input = 0;
  uint64_t cached_input = 0;  // <= input.
  uint64_t output = 0;
  uint64_t reasoning = 0;  // <= output.
};

// One LLM call's usage. Field formats: proto/tokenmeter/v1/event.proto.
struct Usage {
  // Idempotency key, unique per tenant. Empty = Report generates one (NewId()). Set it
  // yourself if you may repeat a failed Report: a generated id is not returned to you.
  std::string event_id{};
  std::string tenant{};
  std::string team{};
  std::string user{};
  std::string api_key{};      // Optional: the key id, never the secret.
  std::string application{};  // Optional.
  std::string provider{};     // gen_ai.provider.name, e.g. "openai".
  std::string model{};        // gen_ai.request.model, e.g. "gpt-4o".
  TokenCounts tokens{};
  // When the call finished. Default: the time Report() is called.
  std::optional<absl::Time> occurred_at{};
};

// A scope of the budget hierarchy: tenant ⊃ team ⊃ user ⊃ api_key, optionally crossed with a
// model. Quota calls name the full scope of the intended LLM call.
struct Scope {
  std::string tenant{};
  std::string team{};
  std::string user{};
  std::string api_key{};   // Optional.
  std::string provider{};  // Needed to price cost limits.
  std::string model{};
};

enum class Metric { kUnknown, kInputTokens, kOutputTokens, kTotalTokens, kRequests, kCostMicroUsd };
// kMinute is a sliding 60 s window; the others are calendar windows in the policy's time zone.
enum class Window { kUnknown, kMinute, kHour, kDay, kMonth };

// The state of one matching limit at decision time.
struct LimitStatus {
  std::string policy_id{};
  std::string scope{};  // The counter scope, e.g. "tenant=acme/team=research".
  Metric metric = Metric::kUnknown;
  Window window = Window::kUnknown;
  bool shadow = false;  // Shadow mode: reported, never denies.
  uint64_t limit = 0;
  uint64_t used = 0;          // Counted in the current window.
  uint64_t outstanding = 0;   // Held by open reservations.
  uint64_t remaining = 0;     // limit - used - outstanding (0 when over), before this request.
  uint64_t requested = 0;     // What this request asks of this metric.
  bool exceeded = false;      // used + outstanding + requested > limit.
  uint32_t warn_percent = 0;  // Highest soft threshold crossed after this request, 0 if none.
};

// The answer of Check or Reserve.
struct Decision {
  bool allowed = false;
  // Every matching limit, the exceeded ones first.
  std::vector<LimitStatus> limits{};
  // When denied: when enough budget should be free again; zero when unknown (e.g. the budget
  // is held by reservations, or a fallback denial).
  absl::Duration retry_after = absl::ZeroDuration();
  // A shadow-mode limit would have denied (the request is allowed all the same).
  bool shadow_denied = false;
  // The shard could not be reached: the sidecar answered from the policy's failure mode.
  bool fallback = false;
  std::string fallback_reason{};
  // Reserve only: when an uncommitted reservation expires. InfinitePast otherwise.
  absl::Time expires_at = absl::InfinitePast();
};

struct ReserveRequest {
  // Idempotency key, unique per tenant; a repeat returns the first decision. Empty = generated.
  std::string reservation_id{};
  Scope scope{};
  // Expected usage of the call, e.g. prompt tokens as input and max_tokens as output.
  TokenCounts estimate{};
  // How long the hold lives if neither committed nor released (1 ms .. 1 h).
  // Default: zero = the shard's default (60 s).
  absl::Duration ttl = absl::ZeroDuration();
};

struct CommitResult {
  // False if the reservation had expired or been released before; the usage is recorded all
  // the same.
  bool reservation_was_open = false;
  // This commit repeated an earlier one (nothing recorded again).
  bool duplicate = false;
  // The shard was unreachable: the commit is durable in the sidecar's queue and will be
  // delivered when the shard is back.
  bool queued = false;
};

struct ClientOptions {
  // Time budget of one call, retries included. Keep it above the sidecar's
  // --quota-deadline-ms, or quota calls time out before the sidecar's fallback answer arrives.
  // Default: 500 ms.
  absl::Duration deadline = absl::Milliseconds(500);
  // Attempts per call (1 = no retry), within the deadline. Default: 3.
  int max_attempts = 3;
  // Pause before the first retry; doubled for each further one, with jitter. Default: 20 ms.
  absl::Duration initial_backoff = absl::Milliseconds(20);
  // false: a call fails at once with UNAVAILABLE while the sidecar is not reachable.
  // true: a call waits (up to the deadline) for the sidecar to come up. Default: false.
  bool wait_for_ready = false;
  // Longest pause between reconnection attempts after the sidecar went away. The sidecar is
  // local, so the default is short (gRPC's own is 120 s). Default: 1 s.
  absl::Duration max_reconnect_backoff = absl::Seconds(1);
};

// A random 128-bit id as 32 lowercase hex digits: a valid event_id or reservation_id.
// Thread-safe.
std::string NewId();

// A budget hold made by Client::Reserve. Move-only scope guard: if it is destroyed (or
// assigned over) while it still holds budget, it calls Release, blocking for at most
// ClientOptions::deadline; errors of that Release are ignored (the hold expires at its TTL).
// It keeps the Client's channel alive, so it may outlive the Client.
class Reservation {
 public:
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation();

  // True if the estimate fits every enforced limit (or the fallback allows): make the call.
  bool allowed() const { return decision_.allowed; }
  absl::Duration retry_after() const { return decision_.retry_after; }
  const Decision& decision() const { return decision_; }
  const std::string& id() const { return id_; }
  // True while the reservation is open: allowed (by the shard, or by the sidecar's fallback,
  // which the sidecar remembers so the Commit still counts), and neither Commit nor Release
  // has succeeded yet.
  bool holds() const { return holds_; }

  // Records the actual usage of the call (it may exceed the estimate: recorded, never
  // refused) and closes the hold. May be repeated (idempotent: the repeat reports duplicate).
  // After a failed Commit the guard still holds: repeat Commit, or let it release.
  // FailedPrecondition if the reservation was denied (or moved from).
  absl::StatusOr<CommitResult> Commit(const TokenCounts& actual);

  // Returns the held budget without recording usage. OK and nothing sent if nothing is held.
  absl::Status Release();

 private:
  friend class Client;
  Reservation(std::shared_ptr<internal::Connection> connection, std::string id, Scope scope,
              Decision decision);
  void ReleaseQuietly();

  std::shared_ptr<internal::Connection> connection_;
  std::string id_;
  Scope scope_;
  Decision decision_;
  bool holds_ = false;
};

class Client {
 public:
  // Makes the channel to `target`: "unix:/path/to/sidecar.sock" or "127.0.0.1:7500" (any
  // gRPC target works). Does not wait for the sidecar: calls fail (or wait, see
  // wait_for_ready) while it is not up. InvalidArgument for an empty target or bad options.
  static absl::StatusOr<Client> Connect(const std::string& target, ClientOptions options = {});

  // Copies share the channel. A moved-from Client may only be assigned to or destroyed.
  Client(const Client&) = default;
  Client& operator=(const Client&) = default;
  Client(Client&&) = default;
  Client& operator=(Client&&) = default;

  // Queues `events` durably at the sidecar, all or nothing: OK means every event will be
  // counted exactly once. Empty event_ids are generated, empty occurred_at become now.
  // An empty vector is OK (nothing sent); more than kMaxEventsPerReport is InvalidArgument.
  absl::Status Report(const std::vector<Usage>& events) const;
  absl::Status Report(const Usage& event) const;

  // Holds `request.estimate` against every matching limit if it fits all enforced ones.
  // OK with allowed() == false when the budget says no (nothing is held then).
  absl::StatusOr<Reservation> Reserve(const ReserveRequest& request) const;

  // Would `usage` of one call in `scope` fit now? Changes nothing.
  absl::StatusOr<Decision> Check(const Scope& scope, const TokenCounts& usage) const;

  // Waits until the channel is connected to the sidecar. DeadlineExceeded after `timeout`.
  absl::Status WaitForReady(absl::Duration timeout) const;

  const std::string& target() const;

 private:
  explicit Client(std::shared_ptr<internal::Connection> connection);

  std::shared_ptr<internal::Connection> connection_;
};

}  // namespace tokenmeter::client

#endif  // TOKENMETER_SERVICES_CLIENT_TOKENMETER_CLIENT_H_
