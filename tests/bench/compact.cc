// `tokenmeter-bench compact`: opens a stopped shard's RocksDB directory with the shard's own
// options (merge operator, compaction filters), flushes every memtable and compacts every
// column family, then closes it, so the directory's size afterwards is the steady-state size of
// the data (WAL replayed into SST files, merge operands folded, expired state dropped).
#include <cstdio>
#include <string>

#include "storage/store.h"
#include "tests/bench/drivers.h"

namespace tokenmeter::bench {

int RunCompact(const std::string& data_dir) {
  storage::StoreOptions options;
  options.path = data_dir;
  auto store = storage::OpenRocksStore(options);
  if (!store.ok()) {
    std::fprintf(stderr, "open %s: %s\n", data_dir.c_str(), store.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = (*store)->CompactAll(); !s.ok()) {
    std::fprintf(stderr, "compact %s: %s\n", data_dir.c_str(), s.ToString().c_str());
    return 1;
  }
  store->reset();  // Closes RocksDB; the WAL is obsolete after the flush and is deleted.
  std::printf("compacted %s\n", data_dir.c_str());
  return 0;
}

}  // namespace tokenmeter::bench
