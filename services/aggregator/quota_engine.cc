#include "services/aggregator/quota_engine.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/aggregator/proto_convert.h"
#include "services/aggregator/rollup.h"
#include "services/aggregator/windows.h"
#include "services/common/sharding.h"
#include "services/common/validation.h"
#include "storage/key_codec.h"
#include "storage/retention.h"
#include "tokenmeter/storage/v1/records.pb.h"

namespace tokenmeter::aggregator {
namespace {

using storage::CounterRecord;
using storage::ScopeKey;
using ReservationRecord = tokenmeter::storage::v1::ReservationRecord;

std::string StripeKey(const std::string& tenant, const std::string& id) {
  return absl::StrCat(tenant, std::string(1, '\0'), id);
}

storage::Granularity GranularityOf(WindowKind w) {
  switch (w) {
    case WindowKind::kMinute:
      return storage::Granularity::kTenSeconds;
    case WindowKind::kHour:
      return storage::Granularity::kHour;
    case WindowKind::kDay:
      return storage::Granularity::kDay;
    case WindowKind::kMonth:
      return storage::Granularity::kMonth;
  }
  return storage::Granularity::kDay;
}

// How long until a minute limit fits again: the time at which enough of the oldest
// sub-buckets have left the sliding window. `buckets` are (start, value), oldest first.
absl::Duration MinuteRetryAfter(const std::vector<std::pair<absl::Time, uint64_t>>& buckets,
                                uint64_t used, uint64_t others, uint64_t limit, absl::Time now) {
  if (others > limit) return absl::ZeroDuration();  // Cannot fit while reservations hold it.
  const absl::Duration leave_after = absl::Seconds(kSubBucketSeconds * kSlidingMinuteBuckets);
  for (const auto& [start, value] : buckets) {
    used -= std::min(used, value);
    if (used <= limit - others) return std::max(absl::ZeroDuration(), start + leave_after - now);
  }
  return leave_after;
}

// Reads the sub-buckets of the sliding minute ending at `now` (one MultiGet), oldest first,
// as (bucket start, value of `metric`). DataLoss if a stored record is malformed.
absl::StatusOr<std::vector<std::pair<absl::Time, uint64_t>>> ReadMinuteBuckets(
    storage::Store* store, const ScopeKey& scope, absl::Time now, Metric metric) {
  const SubBucketRange range = SlidingMinuteBuckets(now);
  std::vector<std::string> keys;
  for (absl::Time t = range.first; t <= range.last; t += absl::Seconds(kSubBucketSeconds)) {
    keys.push_back(
        storage::CounterKey(scope, storage::Granularity::kTenSeconds, absl::ToUnixSeconds(t)));
  }
  std::vector<std::optional<std::string>> values;
  if (absl::Status s = store->MultiGet(storage::Cf::kCounters, keys, &values); !s.ok()) return s;
  std::vector<std::pair<absl::Time, uint64_t>> buckets;
  absl::Time t = range.first;
  for (const auto& value : values) {
    if (value.has_value()) {
      CounterRecord r;
      if (!CounterRecord::Decode(*value, &r)) {
        return absl::DataLossError("malformed sub-bucket counter record");
      }
      buckets.emplace_back(t, MetricValue(r, metric));
    }
    t += absl::Seconds(kSubBucketSeconds);
  }
  return buckets;
}

}  // namespace

QuotaEngine::QuotaEngine(storage::Store* store, PolicyRegistry* registry, ShardIdentity shard,
                         common::Clock* clock, QuotaOptions options)
    : store_(store),
      registry_(registry),
      shard_(shard),
      clock_(clock),
      options_(std::move(options)) {}

QuotaEngine::Reservation QuotaEngine::NewReservation(std::string tenant, std::string id,
                                                     RequestScope scope, TokenCounts estimate) {
  Reservation r;
  r.tenant = std::move(tenant);
  r.id = std::move(id);
  r.scope = std::move(scope);
  r.estimate = estimate;
  return r;
}

QuotaEngine::Stripe& QuotaEngine::StripeFor(const std::string& tenant) {
  return stripes_[common::Hash64(tenant) % stripes_.size()];
}

CounterRecord QuotaEngine::PriceUsage(const RequestScope& scope, const TokenCounts& tokens,
                                      bool* priced) {
  const auto prices = registry_->Prices();
  const ModelPrice* price = prices->Find(scope.provider, scope.model);
  *priced = price != nullptr;
  return UsageRecord(tokens, price);
}

absl::StatusOr<Decision> QuotaEngine::EvaluateLocked(Stripe& stripe, const RequestScope& scope,
                                                     const CounterRecord& request, absl::Time now,
                                                     bool* commit_on_expiry) {
  const auto policies = registry_->PoliciesFor(scope.tenant);
  const std::vector<MatchedLimit> matched = MatchLimits(*policies, scope);
  Decision d;
  for (const MatchedLimit& m : matched) {
    if (m.limit.metric == Metric::kCostMicroUsd && request[storage::kUnpricedRequests] != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no price for provider \"", scope.provider, "\" model \"", scope.model, "\": policy \"",
          m.policy->id, "\" limits cost; add the model to the price table"));
    }
    if (m.policy->on_expiry == ExpiryAction::kCommitEstimate) *commit_on_expiry = true;
    absl::TimeZone tz;
    if (!absl::LoadTimeZone(m.policy->time_zone, &tz)) {
      return absl::InternalError(absl::StrCat("time zone ", m.policy->time_zone, " vanished"));
    }
    LimitState l{m.policy->id,   storage::ScopeToString(m.counter_scope),
                 m.limit.metric, m.limit.window,
                 m.policy->mode, m.limit.amount};
    const storage::Granularity g = GranularityOf(m.limit.window);
    std::vector<std::pair<absl::Time, uint64_t>> buckets;
    if (m.limit.window == WindowKind::kMinute) {
      auto read = ReadMinuteBuckets(store_, m.counter_scope, now, l.metric);
      if (!read.ok()) return read.status();
      buckets = *std::move(read);
      for (const auto& [start, value] : buckets) l.used += value;
    } else {
      const absl::Time start = CalendarWindowStart(m.limit.window, now, tz);
      auto r =
          store_->GetCounter(storage::CounterKey(m.counter_scope, g, absl::ToUnixSeconds(start)));
      if (!r.ok()) return r.status();
      l.used = MetricValue(*r, l.metric);
    }
    auto held = stripe.outstanding.find(m.counter_scope);
    l.outstanding = held == stripe.outstanding.end() ? 0 : MetricValue(held->second, l.metric);
    l.requested = MetricValue(request, l.metric);
    const uint64_t taken = l.used + l.outstanding;
    l.remaining = taken >= l.limit ? 0 : l.limit - taken;
    l.exceeded = taken + l.requested > l.limit;
    for (uint32_t w : m.policy->warn_percents) {
      if ((taken + l.requested) * 100 >= static_cast<uint64_t>(w) * l.limit) l.warn_percent = w;
    }
    if (l.exceeded) {
      l.retry_after =
          m.limit.window == WindowKind::kMinute
              ? MinuteRetryAfter(buckets, l.used, l.outstanding + l.requested, l.limit, now)
              : CalendarWindowEnd(m.limit.window, now, tz) - now;
      if (l.mode == Mode::kEnforce) {
        d.allowed = false;
        d.retry_after = std::max(d.retry_after, l.retry_after);
      } else {
        d.shadow_denied = true;
      }
    }
    d.limits.push_back(std::move(l));
  }
  std::stable_partition(d.limits.begin(), d.limits.end(),
                        [](const LimitState& l) { return l.exceeded; });
  return d;
}

absl::StatusOr<Decision> QuotaEngine::Check(const RequestScope& scope, const TokenCounts& usage) {
  if (absl::Status s = ValidateRequestScope(scope, "scope."); !s.ok()) return s;
  if (absl::Status s = ValidateTokens(usage, options_.limits, "usage.", nullptr); !s.ok()) {
    return s;
  }
  if (absl::Status s = shard_.CheckOwner(scope.tenant); !s.ok()) return s;
  const absl::Time start = absl::Now();
  bool priced = false;
  const CounterRecord request = PriceUsage(scope, usage, &priced);
  Stripe& stripe = StripeFor(scope.tenant);
  bool unused = false;
  absl::StatusOr<Decision> d;
  {
    absl::MutexLock lock(&stripe.mu);
    d = EvaluateLocked(stripe, scope, request, clock_->Now(), &unused);
  }
  RecordDecision("check", scope, d, start);
  return d;
}

void QuotaEngine::HoldLocked(Stripe& stripe, Reservation r) {
  for (const ScopeKey& s : RollupScopes(r.scope)) stripe.outstanding[s].Add(r.held);
  stripe.by_expiry.emplace(r.expires_at, StripeKey(r.tenant, r.id));
  stripe.open.emplace(StripeKey(r.tenant, r.id), std::move(r));
  open_count_.fetch_add(1, std::memory_order_relaxed);
}

void QuotaEngine::UnholdLocked(Stripe& stripe, const std::string& key) {
  auto it = stripe.open.find(key);
  if (it == stripe.open.end()) return;
  const Reservation& r = it->second;
  for (const ScopeKey& s : RollupScopes(r.scope)) {
    auto held = stripe.outstanding.find(s);
    if (held == stripe.outstanding.end()) continue;
    for (int f = 0; f < storage::kNumCounterFields; ++f) {
      auto field = static_cast<storage::CounterField>(f);
      held->second[field] -= std::min(held->second[field], r.held[field]);
    }
    if (held->second.IsZero()) stripe.outstanding.erase(held);
  }
  stripe.by_expiry.erase({r.expires_at, key});
  stripe.open.erase(it);
  open_count_.fetch_sub(1, std::memory_order_relaxed);
}

absl::Status QuotaEngine::WriteReservation(const Reservation& r, int state, absl::Time gc_after,
                                           const CounterRecord* usage, absl::Time usage_at) {
  ReservationRecord record;
  record.set_reservation_id(r.id);
  ToProto(r.scope, record.mutable_scope());
  ToProto(r.estimate, record.mutable_estimate());
  record.set_estimate_cost_micro_usd(r.held[storage::kCostMicroUsd]);
  record.set_estimate_priced(r.priced);
  record.set_expires_at_unix_ms(absl::ToUnixMillis(r.expires_at));
  record.set_state(static_cast<ReservationRecord::State>(state));
  record.set_commit_estimate_on_expiry(r.commit_on_expiry);
  DecisionToProto(r.decision, record.mutable_decision());
  storage::WriteSet writes;
  writes.Put(storage::Cf::kReservations, storage::ReservationKey(r.tenant, r.id),
             storage::EncodeExpiry(gc_after) + record.SerializeAsString());
  if (usage != nullptr) {
    const auto plan = registry_->Plan();
    RollupAccumulator rollup(plan.get());
    rollup.Add(r.scope, usage_at, *usage);
    rollup.AppendTo(&writes);
  }
  return store_->Write(writes);
}

namespace {

absl::Status ValidateReservationRef(const std::string& tenant, const std::string& id) {
  if (absl::Status s = common::ValidateId(common::IdKind::kTenant, "tenant", tenant); !s.ok()) {
    return s;
  }
  return common::ValidateId(common::IdKind::kEventId, "reservation_id", id);
}

// Reads a reservation record from disk; nullopt if there is none.
absl::StatusOr<std::optional<ReservationRecord>> LoadRecord(storage::Store* store,
                                                            const std::string& tenant,
                                                            const std::string& id) {
  auto value = store->Get(storage::Cf::kReservations, storage::ReservationKey(tenant, id));
  if (!value.ok()) return value.status();
  if (!value->has_value()) return std::optional<ReservationRecord>();
  ReservationRecord record;
  if ((*value)->size() < 8 ||
      !record.ParseFromArray((*value)->data() + 8, static_cast<int>((*value)->size() - 8))) {
    return absl::DataLossError(absl::StrCat("unparsable reservation ", id));
  }
  return std::optional<ReservationRecord>(std::move(record));
}

absl::Status UnknownReservation(const std::string& tenant, const std::string& id) {
  return absl::NotFoundError(
      absl::StrCat("reservation \"", id, "\" of tenant \"", tenant,
                   "\" is unknown (never reserved, or closed too long ago)"));
}

}  // namespace

absl::StatusOr<Decision> QuotaEngine::Reserve(const std::string& reservation_id,
                                              const RequestScope& scope,
                                              const TokenCounts& estimate, absl::Duration ttl) {
  const absl::Time start = absl::Now();
  absl::StatusOr<Decision> d = ReserveInternal(reservation_id, scope, estimate, ttl);
  RecordDecision("reserve", scope, d, start);
  return d;
}

void QuotaEngine::RecordDecision(const char* op, const RequestScope& scope,
                                 const absl::StatusOr<Decision>& d, absl::Time start) {
  if (metrics_ == nullptr) return;
  metrics_->quota_decision_seconds.WithLabels({op}).Observe(
      absl::ToDoubleSeconds(absl::Now() - start));
  const char* result = !d.ok()            ? "error"
                       : !d->allowed      ? "denied"
                       : d->shadow_denied ? "shadow_denied"
                                          : "allowed";
  metrics_->quota_decisions.WithLabels({op, result}).Inc();
  metrics_->quota_scope_decisions.WithLabels({scope.tenant, scope.team, op, result}).Inc();
  if (!d.ok()) return;
  for (const LimitState& l : d->limits) {
    if (l.limit == 0) continue;
    const double taken = static_cast<double>(l.used) + static_cast<double>(l.outstanding) +
                         (d->allowed ? static_cast<double>(l.requested) : 0.0);
    metrics_->quota_limit_used_ratio
        .WithLabels({l.policy_id, l.scope, MetricName(l.metric), WindowKindName(l.window),
                     ModeName(l.mode)})
        .Set(taken / static_cast<double>(l.limit));
  }
}

void QuotaEngine::RecordClose(const char* how, const RequestScope& scope,
                              const CounterRecord* usage) {
  if (metrics_ == nullptr) return;
  metrics_->quota_closed.WithLabels({how}).Inc();
  if (usage != nullptr) metrics_->RecordUsage(metrics_->UsageLabelValues(scope), *usage);
}

absl::StatusOr<Decision> QuotaEngine::ReserveInternal(const std::string& reservation_id,
                                                      const RequestScope& scope,
                                                      const TokenCounts& estimate,
                                                      absl::Duration ttl) {
  if (absl::Status s = ValidateRequestScope(scope, "scope."); !s.ok()) return s;
  if (absl::Status s = ValidateReservationRef(scope.tenant, reservation_id); !s.ok()) return s;
  if (absl::Status s = ValidateTokens(estimate, options_.limits, "estimate.", nullptr); !s.ok()) {
    return s;
  }
  if (ttl == absl::ZeroDuration()) ttl = options_.default_ttl;
  if (ttl < absl::Milliseconds(1) || ttl > options_.max_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl_ms: must be 1..", absl::ToInt64Milliseconds(options_.max_ttl)));
  }
  if (absl::Status s = shard_.CheckOwner(scope.tenant); !s.ok()) return s;
  const std::string key = StripeKey(scope.tenant, reservation_id);
  Stripe& stripe = StripeFor(scope.tenant);
  auto not_pending = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mu) {
    auto it = stripe.open.find(key);
    return it == stripe.open.end() || !it->second.pending;
  };
  Reservation r = NewReservation(scope.tenant, reservation_id, scope, estimate);
  r.held = PriceUsage(scope, estimate, &r.priced);
  {
    absl::MutexLock lock(&stripe.mu);
    stripe.mu.Await(absl::Condition(&not_pending));
    if (auto it = stripe.open.find(key); it != stripe.open.end()) return it->second.decision;
    // Closed before? Read under the lock: a close writes its record before it drops the hold,
    // so a reservation that is no longer open is already on disk as closed.
    auto closed = LoadRecord(store_, scope.tenant, reservation_id);
    if (!closed.ok()) return closed.status();
    if (closed->has_value()) return DecisionFromProto((*closed)->decision());
    const absl::Time now = clock_->Now();
    auto d = EvaluateLocked(stripe, scope, r.held, now, &r.commit_on_expiry);
    if (!d.ok()) return d.status();
    if (d->shadow_denied) counters_.shadow_denied.fetch_add(1, std::memory_order_relaxed);
    if (!d->allowed) {
      counters_.denied.fetch_add(1, std::memory_order_relaxed);
      return d;
    }
    d->expires_at = now + ttl;
    r.expires_at = d->expires_at;
    r.decision = *d;
    r.pending = true;
    HoldLocked(stripe, r);
  }
  const absl::Status written =
      WriteReservation(r, ReservationRecord::OPEN, absl::InfiniteFuture(), nullptr, {});
  absl::MutexLock lock(&stripe.mu);
  if (!written.ok()) {
    UnholdLocked(stripe, key);
    return written;
  }
  stripe.open[key].pending = false;
  counters_.allowed.fetch_add(1, std::memory_order_relaxed);
  return r.decision;
}

absl::Status QuotaEngine::CloseOpen(const std::string& tenant, const std::string& id,
                                    CloseKind kind, const TokenCounts* actual) {
  const std::string key = StripeKey(tenant, id);
  Stripe& stripe = StripeFor(tenant);
  Reservation r;
  {
    absl::MutexLock lock(&stripe.mu);
    auto not_pending = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mu) {
      auto it = stripe.open.find(key);
      return it == stripe.open.end() || !it->second.pending;
    };
    stripe.mu.Await(absl::Condition(&not_pending));
    auto it = stripe.open.find(key);
    if (it == stripe.open.end()) return UnknownReservation(tenant, id);
    it->second.pending = true;
    r = it->second;
  }
  const absl::Time now = clock_->Now();
  std::optional<CounterRecord> usage;
  int state = ReservationRecord::RELEASED;
  if (kind == CloseKind::kCommit) {
    bool priced = false;
    usage = PriceUsage(r.scope, *actual, &priced);
    state = ReservationRecord::COMMITTED;
  } else if (kind == CloseKind::kExpire) {
    state = r.commit_on_expiry ? ReservationRecord::EXPIRED_COMMITTED
                               : ReservationRecord::EXPIRED_RELEASED;
    if (r.commit_on_expiry) usage = r.held;
  }
  const absl::Status written =
      WriteReservation(r, state, now + options_.closed_retention, usage ? &*usage : nullptr, now);
  {
    absl::MutexLock lock(&stripe.mu);
    if (!written.ok()) {
      stripe.open[key].pending = false;
      return written;
    }
    UnholdLocked(stripe, key);
  }
  RecordClose(kind == CloseKind::kCommit    ? "commit"
              : kind == CloseKind::kRelease ? "release"
                                            : "expire",
              r.scope, usage ? &*usage : nullptr);
  return absl::OkStatus();
}

absl::StatusOr<CommitOutcome> QuotaEngine::Commit(const std::string& tenant,
                                                  const std::string& reservation_id,
                                                  const TokenCounts& actual) {
  if (absl::Status s = ValidateReservationRef(tenant, reservation_id); !s.ok()) return s;
  if (absl::Status s = ValidateTokens(actual, options_.limits, "actual.", nullptr); !s.ok()) {
    return s;
  }
  if (absl::Status s = shard_.CheckOwner(tenant); !s.ok()) return s;
  absl::Status closed = CloseOpen(tenant, reservation_id, CloseKind::kCommit, &actual);
  if (closed.ok()) {
    counters_.commits.fetch_add(1, std::memory_order_relaxed);
    return CommitOutcome{true, false};
  }
  if (!absl::IsNotFound(closed)) return closed;
  // Not open: a repeated commit, or a commit after release / expiry. Serialized per stripe so
  // two late commits of one reservation cannot both record usage.
  Stripe& stripe = StripeFor(tenant);
  absl::MutexLock lock(&stripe.mu);
  auto record = LoadRecord(store_, tenant, reservation_id);
  if (!record.ok()) return record.status();
  if (!record->has_value()) return UnknownReservation(tenant, reservation_id);
  const ReservationRecord& rec = **record;
  if (rec.state() == ReservationRecord::COMMITTED ||
      rec.state() == ReservationRecord::EXPIRED_COMMITTED) {
    return CommitOutcome{false, true};
  }
  // Released or expired-released: usage is recorded all the same, never refused.
  Reservation r =
      NewReservation(tenant, reservation_id, FromProto(rec.scope()), FromProto(rec.estimate()));
  r.expires_at = absl::FromUnixMillis(rec.expires_at_unix_ms());
  r.decision = DecisionFromProto(rec.decision());
  bool priced = false;
  const CounterRecord usage = PriceUsage(r.scope, actual, &priced);
  const absl::Time now = clock_->Now();
  if (absl::Status s = WriteReservation(r, ReservationRecord::COMMITTED,
                                        now + options_.closed_retention, &usage, now);
      !s.ok()) {
    return s;
  }
  RecordClose("late_commit", r.scope, &usage);
  counters_.commits.fetch_add(1, std::memory_order_relaxed);
  return CommitOutcome{false, false};
}

absl::StatusOr<bool> QuotaEngine::Release(const std::string& tenant,
                                          const std::string& reservation_id) {
  if (absl::Status s = ValidateReservationRef(tenant, reservation_id); !s.ok()) return s;
  if (absl::Status s = shard_.CheckOwner(tenant); !s.ok()) return s;
  absl::Status closed = CloseOpen(tenant, reservation_id, CloseKind::kRelease, nullptr);
  if (closed.ok()) {
    counters_.releases.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  if (!absl::IsNotFound(closed)) return closed;
  auto record = LoadRecord(store_, tenant, reservation_id);
  if (!record.ok()) return record.status();
  if (!record->has_value()) return UnknownReservation(tenant, reservation_id);
  return false;
}

absl::StatusOr<int> QuotaEngine::ExpireDue() {
  const absl::Time now = clock_->Now();
  int expired = 0;
  for (Stripe& stripe : stripes_) {
    std::vector<std::pair<std::string, std::string>> due;  // (tenant, id)
    {
      absl::MutexLock lock(&stripe.mu);
      for (const auto& [at, key] : stripe.by_expiry) {
        if (at > now) break;
        const Reservation& r = stripe.open.at(key);
        if (!r.pending) due.emplace_back(r.tenant, r.id);
      }
    }
    for (const auto& [tenant, id] : due) {
      absl::Status s = CloseOpen(tenant, id, CloseKind::kExpire, nullptr);
      if (s.ok()) {
        ++expired;
      } else if (!absl::IsNotFound(s)) {  // NotFound: committed or released meanwhile.
        return s;
      }
    }
  }
  counters_.expired.fetch_add(expired, std::memory_order_relaxed);
  return expired;
}

absl::Status QuotaEngine::Recover() {
  std::vector<Reservation> open;
  absl::Status parse_error;
  absl::Status s = store_->Scan(
      storage::Cf::kReservations, "", "\xff\xff", [&](std::string_view, std::string_view value) {
        ReservationRecord rec;
        if (value.size() < 8 ||
            !rec.ParseFromArray(value.data() + 8, static_cast<int>(value.size() - 8))) {
          parse_error = absl::DataLossError("unparsable reservation record");
          return false;
        }
        if (rec.state() != ReservationRecord::OPEN) return true;
        Reservation r = NewReservation(rec.scope().tenant(), rec.reservation_id(),
                                       FromProto(rec.scope()), FromProto(rec.estimate()));
        r.held = UsageRecord(r.estimate, nullptr);
        r.held[storage::kUnpricedRequests] = rec.estimate_priced() ? 0 : 1;
        r.held[storage::kCostMicroUsd] = rec.estimate_cost_micro_usd();
        r.priced = rec.estimate_priced();
        r.expires_at = absl::FromUnixMillis(rec.expires_at_unix_ms());
        r.commit_on_expiry = rec.commit_estimate_on_expiry();
        r.decision = DecisionFromProto(rec.decision());
        open.push_back(std::move(r));
        return true;
      });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  for (Reservation& r : open) {
    Stripe& stripe = StripeFor(r.tenant);
    absl::MutexLock lock(&stripe.mu);
    HoldLocked(stripe, std::move(r));
  }
  return absl::OkStatus();
}

}  // namespace tokenmeter::aggregator
