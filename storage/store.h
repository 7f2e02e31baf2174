// The aggregator's storage: an embedded RocksDB with one column family per kind of state,
// written only through atomic multi-column-family WriteSets.
//
// Thread-safety: a Store is safe for concurrent use. Concurrent Write() calls with
// Durability::kSync are group-committed by RocksDB (one WAL fsync serves every writer waiting
// at that moment), so throughput grows with concurrent writers while each caller still
// returns only after its own data is durable.
#ifndef TOKENMETER_STORAGE_STORE_H_
#define TOKENMETER_STORAGE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "storage/counter_record.h"

namespace tokenmeter::storage {

// Column families, opened from the one table in store.cc. Values are stable indexes.
enum class Cf : int {
  kCounters = 0,      // counter key -> CounterRecord (merge operator)
  kDedup = 1,         // dedup key -> u64be expires_at | nothing else
  kProducers = 2,     // producer key -> ProducerState
  kReservations = 3,  // reservation key -> u64be gc_after (0 = open) | payload
  kPolicies = 4,      // policy key -> serialized tokenmeter.v1.Policy
  kMeta = 5,          // free-form: price table, schema version
  kDeadLetters = 6,   // dead-letter key -> serialized tokenmeter.v1.DeadLetter
};
inline constexpr int kNumCfs = 7;
const char* CfName(Cf cf);

// What a successful Write() guarantees.
enum class Durability {
  // Default. Write() returns after the WAL is fsynced: survives kill -9 and power loss.
  kSync,
  // Write() returns after the WAL is written to the OS, not synced: survives a process crash
  // (kill -9), may lose the last writes on power loss or kernel crash.
  kProcessCrashSafe,
};

// How long each kind of state is kept, enforced by compaction filters (so expired state may
// stay on disk until its file is compacted; readers must check expiry themselves).
struct RetentionOptions {
  absl::Duration ten_second_buckets = absl::Hours(2);
  absl::Duration hour_buckets = absl::Hours(24 * 35);
  absl::Duration day_buckets = absl::Hours(24 * 400);
  absl::Duration month_buckets = absl::Hours(24 * 366 * 5);
  absl::Duration dead_letters = absl::Hours(24 * 7);
};

struct StoreOptions {
  std::string path;
  Durability durability = Durability::kSync;
  RetentionOptions retention;
  // Disk budget for SST files (SstFileManager); writes fail with ResourceExhausted past it.
  // Default: 0 = unlimited.
  uint64_t max_disk_bytes = 0;
  // Block cache size. Default: 64 MiB.
  size_t block_cache_bytes = 64 << 20;
  // Clock for retention. Default: absl::Now.
  std::function<absl::Time()> now;
};

// A set of writes applied atomically by Store::Write (one RocksDB WriteBatch).
class WriteSet {
 public:
  void MergeCounter(std::string key, const CounterRecord& delta);
  void Put(Cf cf, std::string key, std::string value);
  void Delete(Cf cf, std::string key);
  size_t size() const { return ops_.size(); }
  bool empty() const { return ops_.empty(); }

  struct Op {
    enum Kind { kPut, kMerge, kDelete } kind;
    Cf cf;
    std::string key;
    std::string value;
  };
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

// Gauges for metrics and /readyz.
struct StoreStats {
  uint64_t live_sst_bytes = 0;
  uint64_t memtable_bytes = 0;
  uint64_t pending_compaction_bytes = 0;
  bool write_stopped = false;
  uint64_t write_stall_micros = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Applies every op of `writes` atomically with the configured durability. On error nothing
  // of it is applied: ResourceExhausted when the disk (or the disk budget) is full,
  // DataLoss on corruption, Unavailable on other I/O errors (retry later).
  virtual absl::Status Write(const WriteSet& writes) = 0;

  // Reads one value. Returns nullopt if there is no entry for key.
  virtual absl::StatusOr<std::optional<std::string>> Get(Cf cf, std::string_view key) = 0;

  // Reads many values of one column family; out[i] is nullopt where keys[i] has no entry.
  virtual absl::Status MultiGet(Cf cf, const std::vector<std::string>& keys,
                                std::vector<std::optional<std::string>>* out) = 0;

  // Returns the counter record at key (all zero if absent). DataLoss if malformed.
  virtual absl::StatusOr<CounterRecord> GetCounter(std::string_view key) = 0;

  // Visits entries with start <= key < limit in key order until `visit` returns false.
  // An empty `limit` means "every key starting with `start`" (a prefix scan).
  using Visitor = std::function<bool(std::string_view key, std::string_view value)>;
  virtual absl::Status Scan(Cf cf, std::string_view start, std::string_view limit,
                            const Visitor& visit) = 0;

  virtual StoreStats Stats() = 0;

  // Flushes memtables and compacts everything (tests and tooling; runs retention now).
  virtual absl::Status CompactAll() = 0;
};

// Opens (creating if missing) the RocksDB store at options.path.
absl::StatusOr<std::unique_ptr<Store>> OpenRocksStore(const StoreOptions& options);

}  // namespace tokenmeter::storage

#endif  // TOKENMETER_STORAGE_STORE_H_
