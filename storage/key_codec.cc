#include "storage/key_codec.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tokenmeter::storage {
namespace {

void PutString(std::string* out, std::string_view s) {
  const size_t n = std::min<size_t>(s.size(), 255);
  out->push_back(static_cast<char>(n));
  out->append(s.data(), n);
}

// Reads a length-prefixed string at *in, advancing it. Returns false if truncated.
bool GetString(std::string_view* in, std::string* out) {
  if (in->empty()) return false;
  const size_t n = static_cast<unsigned char>((*in)[0]);
  if (in->size() < 1 + n) return false;
  out->assign(in->substr(1, n));
  in->remove_prefix(1 + n);
  return true;
}

std::string ScopeBytes(const ScopeKey& scope) {
  std::string out = TenantPrefix(scope.tenant);
  const Level level = LevelOf(scope);
  out.push_back(static_cast<char>(static_cast<uint8_t>(level) | (scope.model.empty() ? 0 : 0x10)));
  PutString(&out, scope.team);
  PutString(&out, scope.user);
  PutString(&out, scope.api_key);
  PutString(&out, scope.model);
  return out;
}

}  // namespace

void PutBigEndian64(std::string* out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

uint64_t GetBigEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

Level LevelOf(const ScopeKey& scope) {
  if (!scope.api_key.empty()) return Level::kApiKey;
  if (!scope.user.empty()) return Level::kUser;
  if (!scope.team.empty()) return Level::kTeam;
  return Level::kTenant;
}

std::string ScopeToString(const ScopeKey& scope) {
  std::string out = absl::StrCat("tenant=", scope.tenant);
  if (!scope.team.empty()) absl::StrAppend(&out, "/team=", scope.team);
  if (!scope.user.empty()) absl::StrAppend(&out, "/user=", scope.user);
  if (!scope.api_key.empty()) absl::StrAppend(&out, "/api_key=", scope.api_key);
  if (!scope.model.empty()) absl::StrAppend(&out, "/model=", scope.model);
  return out;
}

std::string TenantPrefix(std::string_view tenant) {
  std::string out;
  PutString(&out, tenant);
  return out;
}

std::string CounterSeriesPrefix(const ScopeKey& scope, Granularity granularity) {
  std::string out = ScopeBytes(scope);
  out.push_back(static_cast<char>(granularity));
  return out;
}

std::string CounterKey(const ScopeKey& scope, Granularity granularity, int64_t window_start) {
  std::string out = CounterSeriesPrefix(scope, granularity);
  PutBigEndian64(&out, static_cast<uint64_t>(window_start));
  return out;
}

std::string CounterLevelPrefix(std::string_view tenant, Level level, bool with_model) {
  std::string out = TenantPrefix(tenant);
  out.push_back(static_cast<char>(static_cast<uint8_t>(level) | (with_model ? 0x10 : 0)));
  return out;
}

std::optional<DecodedCounterKey> DecodeCounterKey(std::string_view key) {
  DecodedCounterKey d;
  if (!GetString(&key, &d.scope.tenant) || key.empty()) return std::nullopt;
  const auto level_byte = static_cast<uint8_t>(key[0]);
  key.remove_prefix(1);
  if (!GetString(&key, &d.scope.team) || !GetString(&key, &d.scope.user) ||
      !GetString(&key, &d.scope.api_key) || !GetString(&key, &d.scope.model)) {
    return std::nullopt;
  }
  const uint8_t expected =
      static_cast<uint8_t>(LevelOf(d.scope)) | (d.scope.model.empty() ? 0 : 0x10);
  if (level_byte != expected || key.size() != 9) return std::nullopt;
  const auto g = static_cast<uint8_t>(key[0]);
  if (g < static_cast<uint8_t>(Granularity::kTenSeconds) ||
      g > static_cast<uint8_t>(Granularity::kMonth)) {
    return std::nullopt;
  }
  d.granularity = static_cast<Granularity>(g);
  d.window_start = static_cast<int64_t>(GetBigEndian64(key.data() + 1));
  return d;
}

std::string DedupKey(std::string_view tenant, std::string_view event_id) {
  return TenantPrefix(tenant).append(event_id);
}

std::string ReservationKey(std::string_view tenant, std::string_view reservation_id) {
  return TenantPrefix(tenant).append(reservation_id);
}

std::string PolicyKey(std::string_view tenant, std::string_view policy_id) {
  return TenantPrefix(tenant).append(policy_id);
}

std::string DeadLetterKey(int64_t received_at_unix_ms, uint64_t sequence) {
  std::string out;
  PutBigEndian64(&out, static_cast<uint64_t>(received_at_unix_ms));
  PutBigEndian64(&out, sequence);
  return out;
}

std::optional<int64_t> DeadLetterTime(std::string_view key) {
  if (key.size() != 16) return std::nullopt;
  return static_cast<int64_t>(GetBigEndian64(key.data()));
}

}  // namespace tokenmeter::storage
