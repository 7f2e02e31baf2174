#include "services/aggregator/usage_reader.h"

#include <algorithm>
#include <deque>

#include "absl/strings/str_cat.h"
#include "services/aggregator/rollup.h"
#include "services/aggregator/windows.h"
#include "services/common/validation.h"

namespace tokenmeter::aggregator {
namespace {

using storage::Granularity;

WindowKind KindOf(Granularity g) {
  switch (g) {
    case Granularity::kTenSeconds:
      return WindowKind::kMinute;
    case Granularity::kHour:
      return WindowKind::kHour;
    case Granularity::kDay:
      return WindowKind::kDay;
    case Granularity::kMonth:
      return WindowKind::kMonth;
  }
  return WindowKind::kDay;
}

const char* GranularityName(Granularity g) {
  switch (g) {
    case Granularity::kTenSeconds:
      return "10-second";
    case Granularity::kHour:
      return "hour";
    case Granularity::kDay:
      return "day";
    case Granularity::kMonth:
      return "month";
  }
  return "unknown";
}

absl::Duration ShortestWindow(Granularity g) {
  switch (g) {
    case Granularity::kTenSeconds:
      return absl::Seconds(kSubBucketSeconds);
    case Granularity::kHour:
      return absl::Minutes(30);  // Half-hour DST shifts make some hours 30 min long.
    case Granularity::kDay:
      return absl::Hours(23);
    case Granularity::kMonth:
      return absl::Hours(24 * 28 - 1);
  }
  return absl::Seconds(1);
}

absl::Status ValidateScopeKey(const storage::ScopeKey& s) {
  using common::IdKind;
  if (absl::Status st = common::ValidateId(IdKind::kTenant, "scope.tenant", s.tenant); !st.ok()) {
    return st;
  }
  if ((s.team.empty() && !s.user.empty()) || (s.user.empty() && !s.api_key.empty())) {
    return absl::InvalidArgumentError(
        "scope: levels must be contiguous (user needs team, "
        "api_key needs user)");
  }
  absl::Status st = common::ValidateOptionalId(IdKind::kTeam, "scope.team", s.team);
  if (st.ok()) st = common::ValidateOptionalId(IdKind::kUser, "scope.user", s.user);
  if (st.ok()) st = common::ValidateOptionalId(IdKind::kApiKey, "scope.api_key", s.api_key);
  if (st.ok()) st = common::ValidateOptionalId(IdKind::kModel, "scope.model", s.model);
  return st;
}

}  // namespace

absl::StatusOr<absl::TimeZone> UsageReader::ZoneFor(Granularity g, const std::string& name) {
  const std::string zone = name.empty() ? "UTC" : name;
  absl::TimeZone tz;
  if (!absl::LoadTimeZone(zone, &tz)) {
    return absl::InvalidArgumentError(absl::StrCat("time_zone: unknown zone \"", zone, "\""));
  }
  if (g != Granularity::kTenSeconds && !registry_->HasZone(zone)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "time_zone: no calendar buckets are kept for \"", zone,
        "\"; use UTC or the zone of a policy (buckets are kept for every policy's zone)"));
  }
  return tz;
}

absl::Status UsageReader::CheckKept(const storage::ScopeKey& scope, Granularity g) {
  if (registry_->Plan()->Keeps(scope, g)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "granularity: this shard keeps no ", GranularityName(g), " buckets at the level of ",
      storage::ScopeToString(scope),
      " (see README, \"Roll-up plan\": kept are the baseline and what policies read)"));
}

absl::StatusOr<std::vector<UsagePoint>> UsageReader::GetUsage(const storage::ScopeKey& scope,
                                                              Granularity g, absl::Time from,
                                                              absl::Time to,
                                                              const std::string& time_zone) {
  if (absl::Status s = ValidateScopeKey(scope); !s.ok()) return s;
  if (absl::Status s = shard_.CheckOwner(scope.tenant); !s.ok()) return s;
  if (from >= to || from < absl::UnixEpoch()) {
    return absl::InvalidArgumentError("from, to: need 1970 <= from < to");
  }
  if ((to - from) / ShortestWindow(g) > static_cast<double>(kMaxPoints)) {
    return absl::InvalidArgumentError(
        absl::StrCat("from, to: the range spans more than ", kMaxPoints, " windows"));
  }
  if (absl::Status s = CheckKept(scope, g); !s.ok()) return s;
  auto tz = ZoneFor(g, time_zone);
  if (!tz.ok()) return tz.status();
  const WindowKind kind = KindOf(g);
  const absl::Time first = CalendarWindowStart(kind, from, *tz);
  std::vector<UsagePoint> points;
  absl::Status decode_error;
  absl::Status s = store_->Scan(
      storage::Cf::kCounters, storage::CounterKey(scope, g, absl::ToUnixSeconds(first)),
      storage::CounterKey(scope, g, absl::ToUnixSeconds(to)), [&](auto key, auto value) {
        const auto decoded = storage::DecodeCounterKey(key);
        UsagePoint p;
        if (!decoded || !storage::CounterRecord::Decode(value, &p.totals)) {
          decode_error = absl::DataLossError("malformed counter entry");
          return false;
        }
        p.window_start = absl::FromUnixSeconds(decoded->window_start);
        // Buckets of other zones interleave in the same series; keep this zone's windows.
        if (CalendarWindowStart(kind, p.window_start, *tz) != p.window_start) return true;
        points.push_back(p);
        return points.size() < kMaxPoints;
      });
  if (!s.ok()) return s;
  if (!decode_error.ok()) return decode_error;
  return points;
}

absl::StatusOr<std::vector<Spender>> UsageReader::TopSpenders(
    const std::string& tenant, SpenderLevel level, Metric metric, Granularity g, absl::Time at,
    const std::string& time_zone, size_t limit, absl::Time* window_start) {
  if (absl::Status s = common::ValidateId(common::IdKind::kTenant, "tenant", tenant); !s.ok()) {
    return s;
  }
  if (absl::Status s = shard_.CheckOwner(tenant); !s.ok()) return s;
  if (limit == 0 || limit > kMaxSpenders) {
    return absl::InvalidArgumentError(absl::StrCat("limit: must be 1..", kMaxSpenders));
  }
  const storage::ScopeKey shape =
      level == SpenderLevel::kTeam     ? storage::ScopeKey{tenant, "t", "", "", ""}
      : level == SpenderLevel::kUser   ? storage::ScopeKey{tenant, "t", "u", "", ""}
      : level == SpenderLevel::kApiKey ? storage::ScopeKey{tenant, "t", "u", "k", ""}
                                       : storage::ScopeKey{tenant, "", "", "", "m"};
  if (absl::Status s = CheckKept(shape, g); !s.ok()) return s;
  auto tz = ZoneFor(g, time_zone);
  if (!tz.ok()) return tz.status();
  *window_start = CalendarWindowStart(KindOf(g), at, *tz);
  const int64_t start = absl::ToUnixSeconds(*window_start);
  const std::string prefix =
      level == SpenderLevel::kModel
          ? storage::CounterLevelPrefix(tenant, storage::Level::kTenant, true)
          : storage::CounterLevelPrefix(tenant,
                                        level == SpenderLevel::kTeam   ? storage::Level::kTeam
                                        : level == SpenderLevel::kUser ? storage::Level::kUser
                                                                       : storage::Level::kApiKey,
                                        false);
  std::vector<Spender> all;
  absl::Status s = store_->Scan(storage::Cf::kCounters, prefix, "", [&](auto key, auto value) {
    const auto decoded = storage::DecodeCounterKey(key);
    if (!decoded || decoded->granularity != g || decoded->window_start != start) return true;
    Spender sp;
    sp.scope = decoded->scope;
    if (!storage::CounterRecord::Decode(value, &sp.totals)) return true;
    sp.value = MetricValue(sp.totals, metric);
    all.push_back(std::move(sp));
    return true;
  });
  if (!s.ok()) return s;
  const size_t n = std::min(limit, all.size());
  std::partial_sort(all.begin(), all.begin() + n, all.end(),
                    [](const Spender& a, const Spender& b) { return a.value > b.value; });
  all.resize(n);
  return all;
}

absl::StatusOr<std::vector<v1::DeadLetter>> UsageReader::ListDeadLetters(const std::string& tenant,
                                                                         size_t limit) {
  std::deque<v1::DeadLetter> newest;
  absl::Status s =
      store_->Scan(storage::Cf::kDeadLetters, "", std::string(17, '\xff'), [&](auto, auto value) {
        v1::DeadLetter letter;
        if (!letter.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          return true;
        }
        if (!tenant.empty() && letter.event().tenant() != tenant) {
          return true;
        }
        newest.push_front(std::move(letter));
        if (newest.size() > limit) newest.pop_back();
        return true;
      });
  if (!s.ok()) return s;
  return std::vector<v1::DeadLetter>(newest.begin(), newest.end());
}

}  // namespace tokenmeter::aggregator
