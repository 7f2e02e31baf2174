// The key layout of every column family. Keys of one tenant share the tenant prefix (so a
// tenant's range can be exported and ingested elsewhere when resharding), and counter keys end
// in a big-endian window start so a scope's windows scan in time order.
//
//   tenant prefix  := u8 len | tenant bytes
//   counter key    := tenant prefix | u8 level | str team | str user | str api_key | str model
//                     | u8 granularity | u64be window_start_unix_seconds
//   (str := u8 len | bytes; fields below the level are empty strings)
//   dedup key      := tenant prefix | event_id
//   reservation key:= tenant prefix | reservation_id
//   policy key     := tenant prefix | policy_id
//   producer key   := producer_id
//   dead letter key:= u64be received_at_unix_ms | u64be sequence
//
// Every string component is at most 255 bytes (callers validate far shorter bounds first).
// Pure functions; thread-safe.
#ifndef TOKENMETER_STORAGE_KEY_CODEC_H_
#define TOKENMETER_STORAGE_KEY_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tokenmeter::storage {

// A node of the usage hierarchy, optionally crossed with a model. A field is empty when the
// scope aggregates over it: {tenant} is the whole tenant, {tenant, team} one team, ...,
// {tenant, "", "", "", model} one model across the tenant.
struct ScopeKey {
  std::string tenant;
  std::string team;
  std::string user;
  std::string api_key;
  std::string model;

  friend bool operator==(const ScopeKey&, const ScopeKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ScopeKey& s) {
    return H::combine(std::move(h), s.tenant, s.team, s.user, s.api_key, s.model);
  }
};

// The level of a scope: how deep in tenant ⊃ team ⊃ user ⊃ api_key it sits.
enum class Level : uint8_t { kTenant = 1, kTeam = 2, kUser = 3, kApiKey = 4 };
Level LevelOf(const ScopeKey& scope);

// Renders "tenant=acme/team=research/model=gpt-4o" (for logs, errors and LimitStatus.scope).
std::string ScopeToString(const ScopeKey& scope);

// Storage granularities. Values are part of the on-disk format: never renumber.
enum class Granularity : uint8_t { kTenSeconds = 1, kHour = 2, kDay = 3, kMonth = 4 };

std::string TenantPrefix(std::string_view tenant);

// Encodes a counter key. window_start is unix seconds (>= 0).
std::string CounterKey(const ScopeKey& scope, Granularity granularity, int64_t window_start);

// The prefix shared by all counter keys of one scope and granularity (window_start omitted).
std::string CounterSeriesPrefix(const ScopeKey& scope, Granularity granularity);

// The prefix of all counter keys of a tenant at one level, with or without a model; scanning
// it visits every scope of that level (used by top-N).
std::string CounterLevelPrefix(std::string_view tenant, Level level, bool with_model);

struct DecodedCounterKey {
  ScopeKey scope;
  Granularity granularity;
  int64_t window_start;
};
// Returns the decoded key, or nullopt if `key` is not a well-formed counter key.
std::optional<DecodedCounterKey> DecodeCounterKey(std::string_view key);

std::string DedupKey(std::string_view tenant, std::string_view event_id);
std::string ReservationKey(std::string_view tenant, std::string_view reservation_id);
std::string PolicyKey(std::string_view tenant, std::string_view policy_id);
std::string DeadLetterKey(int64_t received_at_unix_ms, uint64_t sequence);
// Returns the received time of a dead-letter key, or nullopt if malformed.
std::optional<int64_t> DeadLetterTime(std::string_view key);

// Big-endian fixed-width helpers (exposed for tests and the compaction filter).
void PutBigEndian64(std::string* out, uint64_t value);
uint64_t GetBigEndian64(const char* p);

}  // namespace tokenmeter::storage

#endif  // TOKENMETER_STORAGE_KEY_CODEC_H_
