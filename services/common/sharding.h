// Tenant-to-shard ownership: the one function every component (sidecar, aggregator, CLI,
// simulator) uses to route a tenant. Changing it moves tenants between shards, so it is
// specified exactly here for reimplementation in other languages:
//
//   Hash64(s)  = fmix64(fnv1a64(s))   fnv1a64: offset 0xcbf29ce484222325, prime 0x100000001b3
//                                     fmix64: MurmurHash3's 64-bit finalizer
//   owner(t,N) = JumpConsistentHash(Hash64(t), N)   (Lamping & Veach, 2014)
//
// Pure functions; thread-safe.
#ifndef TOKENMETER_SERVICES_COMMON_SHARDING_H_
#define TOKENMETER_SERVICES_COMMON_SHARDING_H_

#include <cstdint>
#include <string_view>

namespace tokenmeter::common {

uint64_t Hash64(std::string_view s);

// Returns a bucket in [0, num_buckets). num_buckets must be >= 1.
int32_t JumpConsistentHash(uint64_t key, int32_t num_buckets);

// Returns the index of the shard that owns `tenant` among `shard_count` shards.
inline int32_t OwnerShard(std::string_view tenant, int32_t shard_count) {
  return JumpConsistentHash(Hash64(tenant), shard_count);
}

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_SHARDING_H_
