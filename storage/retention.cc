#include "storage/retention.h"

#include "storage/key_codec.h"

namespace tokenmeter::storage {
namespace {

// Drops counter buckets whose window ended longer ago than their granularity's retention.
// Malformed keys are kept: retention never deletes what it cannot understand.
class CounterRetentionFilter : public rocksdb::CompactionFilter {
 public:
  CounterRetentionFilter(const RetentionOptions& r, absl::Time now) : r_(r), now_(now) {}

  Decision FilterV2(int level, const rocksdb::Slice& key, ValueType value_type,
                    const rocksdb::Slice& existing_value, std::string* new_value,
                    std::string* skip_until) const override {
    const auto decoded = DecodeCounterKey(key.ToStringView());
    if (!decoded) return Decision::kKeep;
    const absl::Time start = absl::FromUnixSeconds(decoded->window_start);
    return start + RetentionOf(decoded->granularity) < now_ ? Decision::kRemove : Decision::kKeep;
  }
  const char* Name() const override { return "tokenmeter.CounterRetention"; }

 private:
  absl::Duration RetentionOf(Granularity g) const {
    switch (g) {
      case Granularity::kTenSeconds:
        return r_.ten_second_buckets;
      case Granularity::kHour:
        return r_.hour_buckets;
      case Granularity::kDay:
        return r_.day_buckets;
      case Granularity::kMonth:
        return r_.month_buckets;
    }
    return absl::InfiniteDuration();
  }
  const RetentionOptions r_;
  const absl::Time now_;
};

// Drops values whose leading expiry has passed (dedup keys, closed reservations).
class ExpiryFilter : public rocksdb::CompactionFilter {
 public:
  explicit ExpiryFilter(absl::Time now) : now_(now) {}
  bool Filter(int level, const rocksdb::Slice& key, const rocksdb::Slice& value,
              std::string* new_value, bool* value_changed) const override {
    const auto expiry = DecodeExpiry(value.ToStringView());
    return expiry.has_value() && *expiry < now_;
  }
  const char* Name() const override { return "tokenmeter.ExpiryRetention"; }

 private:
  const absl::Time now_;
};

// Drops dead letters received longer ago than the retention.
class DeadLetterFilter : public rocksdb::CompactionFilter {
 public:
  DeadLetterFilter(absl::Duration keep, absl::Time now) : keep_(keep), now_(now) {}
  bool Filter(int level, const rocksdb::Slice& key, const rocksdb::Slice& value,
              std::string* new_value, bool* value_changed) const override {
    const auto at = DeadLetterTime(key.ToStringView());
    return at.has_value() && absl::FromUnixMillis(*at) + keep_ < now_;
  }
  const char* Name() const override { return "tokenmeter.DeadLetterRetention"; }

 private:
  const absl::Duration keep_;
  const absl::Time now_;
};

class RetentionFilterFactory : public rocksdb::CompactionFilterFactory {
 public:
  RetentionFilterFactory(Cf cf, const RetentionOptions& r, std::function<absl::Time()> now)
      : cf_(cf), r_(r), now_(std::move(now)) {}

  std::unique_ptr<rocksdb::CompactionFilter> CreateCompactionFilter(
      const rocksdb::CompactionFilter::Context& context) override {
    const absl::Time now = now_();
    switch (cf_) {
      case Cf::kCounters:
        return std::make_unique<CounterRetentionFilter>(r_, now);
      case Cf::kDedup:
      case Cf::kReservations:
        return std::make_unique<ExpiryFilter>(now);
      case Cf::kDeadLetters:
        return std::make_unique<DeadLetterFilter>(r_.dead_letters, now);
      default:
        return nullptr;
    }
  }
  const char* Name() const override { return "tokenmeter.RetentionFilterFactory"; }

 private:
  const Cf cf_;
  const RetentionOptions r_;
  const std::function<absl::Time()> now_;
};

}  // namespace

std::string EncodeExpiry(absl::Time expires_at) {
  std::string out;
  PutBigEndian64(&out, expires_at == absl::InfiniteFuture()
                           ? 0
                           : static_cast<uint64_t>(absl::ToUnixSeconds(expires_at)));
  return out;
}

std::optional<absl::Time> DecodeExpiry(std::string_view value) {
  if (value.size() < 8) return std::nullopt;
  const uint64_t s = GetBigEndian64(value.data());
  if (s == 0) return absl::InfiniteFuture();
  return absl::FromUnixSeconds(static_cast<int64_t>(s));
}

std::shared_ptr<rocksdb::CompactionFilterFactory> MakeRetentionFilterFactory(
    Cf cf, const RetentionOptions& retention, std::function<absl::Time()> now) {
  switch (cf) {
    case Cf::kCounters:
    case Cf::kDedup:
    case Cf::kReservations:
    case Cf::kDeadLetters:
      return std::make_shared<RetentionFilterFactory>(cf, retention, std::move(now));
    default:
      return nullptr;
  }
}

}  // namespace tokenmeter::storage
