// RocksDB implementation of Store: options built in one function, column families opened from
// one table, every write a single WriteBatch with the sync choice visible at the call.
#include <unistd.h>

#include <array>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/sst_file_manager.h"
#include "rocksdb/table.h"
#include "storage/retention.h"
#include "storage/rocks_status.h"
#include "storage/store.h"

namespace tokenmeter::storage {
namespace {

// The one table of column families. Index = Cf value.
constexpr std::array<const char*, kNumCfs> kCfNames = {
    "counters", "dedup", "producers", "reservations", "policies", "meta", "dead_letters"};

rocksdb::ColumnFamilyOptions CfOptions(Cf cf, const StoreOptions& options,
                                       const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions o;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  // Dedup and counter lookups are mostly point reads of keys that often do not exist yet.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  o.compaction_filter_factory = MakeRetentionFilterFactory(
      cf, options.retention, options.now ? options.now : [] { return absl::Now(); });
  if (cf == Cf::kCounters) {
    o.merge_operator = std::make_shared<CounterAddOperator>();
    // max_successive_merges stays 0: with it, every merge first walks the memtable (36% of
    // ingest CPU in tests/bench). Ingest already sums deltas per group commit, so a hot key
    // collects one operand per group, which reads merge cheaply.
  }
  return o;
}

// RocksDB's info log, on stderr instead of a LOG file in the data directory: a full data
// volume must not take the logger down with it (Debian's RocksDB is built with assertions, and
// a failed LOG append after ENOSPC aborts the process). Warnings and above only.
class StderrLogger final : public rocksdb::Logger {
 public:
  StderrLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char buf[1024];
    const int n = vsnprintf(buf, sizeof(buf), format, ap);
    if (n < 0) return;
    std::string line = "level=warn component=rocksdb msg=\"";
    for (const char* p = buf; *p != '\0'; ++p) {
      line.push_back(*p == '"' ? '\'' : (*p == '\n' ? ' ' : *p));
    }
    line += "\"\n";
    [[maybe_unused]] ssize_t w = write(STDERR_FILENO, line.data(), line.size());
  }
};

rocksdb::DBOptions DbOptions(const StoreOptions& options,
                             std::shared_ptr<rocksdb::SstFileManager> sst_manager) {
  rocksdb::DBOptions o;
  o.create_if_missing = true;
  o.create_missing_column_families = true;
  o.max_background_jobs = 2;
  o.info_log = std::make_shared<StderrLogger>();
  // Only with a disk budget: an SstFileManager also makes RocksDB wait, after a full disk, for
  // free space >= the largest write buffer (64 MiB) before it accepts writes again. Without
  // it, the next write after space was freed resumes the database (RocksStore::Write).
  o.sst_file_manager = std::move(sst_manager);
  return o;
}

class RocksStore final : public Store {
 public:
  RocksStore(std::unique_ptr<rocksdb::DB> db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
             Durability durability)
      : db_(std::move(db)), handles_(std::move(handles)), durability_(durability) {}

  ~RocksStore() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close().PermitUncheckedError();
  }

  absl::Status Write(const WriteSet& writes) override {
    rocksdb::WriteBatch batch;
    for (const auto& op : writes.ops()) {
      rocksdb::ColumnFamilyHandle* h = handles_[static_cast<int>(op.cf)];
      rocksdb::Status s;
      switch (op.kind) {
        case WriteSet::Op::kPut:
          s = batch.Put(h, op.key, op.value);
          break;
        case WriteSet::Op::kMerge:
          s = batch.Merge(h, op.key, op.value);
          break;
        case WriteSet::Op::kDelete:
          s = batch.Delete(h, op.key);
          break;
      }
      if (!s.ok()) return FromRocksStatus(s, "build write batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = durability_ == Durability::kSync;
    rocksdb::Status s = db_->Write(wo, &batch);
    if (!s.ok() && (s.IsNoSpace() || s.IsIOError())) {
      // A full disk puts RocksDB in read-only mode; try to leave it once space may be back.
      if (db_->Resume().ok()) s = db_->Write(wo, &batch);
    }
    return FromRocksStatus(s, "write");
  }

  absl::StatusOr<std::optional<std::string>> Get(Cf cf, std::string_view key) override {
    std::string value;
    const rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), handles_[static_cast<int>(cf)], key, &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return FromRocksStatus(s, absl::StrCat("get from ", CfName(cf)));
    return std::optional<std::string>(std::move(value));
  }

  absl::Status MultiGet(Cf cf, const std::vector<std::string>& keys,
                        std::vector<std::optional<std::string>>* out) override {
    std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
    std::vector<rocksdb::PinnableSlice> values(keys.size());
    std::vector<rocksdb::Status> statuses(keys.size());
    db_->MultiGet(rocksdb::ReadOptions(), handles_[static_cast<int>(cf)], keys.size(),
                  slices.data(), values.data(), statuses.data());
    out->assign(keys.size(), std::nullopt);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (statuses[i].IsNotFound()) continue;
      if (!statuses[i].ok()) return FromRocksStatus(statuses[i], "multiget");
      (*out)[i] = values[i].ToString();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CounterRecord> GetCounter(std::string_view key) override {
    auto value = Get(Cf::kCounters, key);
    if (!value.ok()) return value.status();
    CounterRecord record;
    if (value->has_value() && !CounterRecord::Decode(**value, &record)) {
      return absl::DataLossError("counter record of wrong size");
    }
    return record;
  }

  absl::Status Scan(Cf cf, std::string_view start, std::string_view limit,
                    const Visitor& visit) override {
    rocksdb::ReadOptions ro;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, handles_[static_cast<int>(cf)]));
    for (it->Seek(start); it->Valid(); it->Next()) {
      const std::string_view key = it->key().ToStringView();
      if (limit.empty() ? !key.starts_with(start) : key >= limit) break;
      if (!visit(key, it->value().ToStringView())) break;
    }
    return FromRocksStatus(it->status(), "scan");
  }

  StoreStats Stats() override {
    StoreStats stats;
    uint64_t v = 0;
    for (auto* h : handles_) {
      if (db_->GetIntProperty(h, rocksdb::DB::Properties::kLiveSstFilesSize, &v)) {
        stats.live_sst_bytes += v;
      }
      if (db_->GetIntProperty(h, rocksdb::DB::Properties::kCurSizeAllMemTables, &v)) {
        stats.memtable_bytes += v;
      }
      if (db_->GetIntProperty(h, rocksdb::DB::Properties::kEstimatePendingCompactionBytes, &v)) {
        stats.pending_compaction_bytes += v;
      }
    }
    if (db_->GetIntProperty(rocksdb::DB::Properties::kIsWriteStopped, &v)) {
      stats.write_stopped = v != 0;
    }
    return stats;
  }

  absl::Status CompactAll() override {
    for (auto* h : handles_) {
      rocksdb::CompactRangeOptions o;
      o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
      auto s = db_->Flush(rocksdb::FlushOptions(), h);
      if (!s.ok()) return FromRocksStatus(s, "flush");
      s = db_->CompactRange(o, h, nullptr, nullptr);
      if (!s.ok()) return FromRocksStatus(s, "compact");
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  const Durability durability_;
};

}  // namespace

const char* CfName(Cf cf) { return kCfNames[static_cast<int>(cf)]; }

void WriteSet::MergeCounter(std::string key, const CounterRecord& delta) {
  ops_.push_back({Op::kMerge, Cf::kCounters, std::move(key), delta.Encode()});
}
void WriteSet::Put(Cf cf, std::string key, std::string value) {
  ops_.push_back({Op::kPut, cf, std::move(key), std::move(value)});
}
void WriteSet::Delete(Cf cf, std::string key) {
  ops_.push_back({Op::kDelete, cf, std::move(key), {}});
}

absl::StatusOr<std::unique_ptr<Store>> OpenRocksStore(const StoreOptions& options) {
  std::error_code mkdir_error;
  std::filesystem::create_directories(options.path, mkdir_error);  // RocksDB makes one level.
  if (mkdir_error) {
    return absl::UnavailableError(
        absl::StrCat("create ", options.path, ": ", mkdir_error.message()));
  }
  std::shared_ptr<rocksdb::SstFileManager> sst_manager;
  if (options.max_disk_bytes > 0) {
    sst_manager.reset(rocksdb::NewSstFileManager(rocksdb::Env::Default()));
    sst_manager->SetMaxAllowedSpaceUsage(options.max_disk_bytes);
  }
  const auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (int i = 0; i < kNumCfs; ++i) {
    cfs.emplace_back(kCfNames[i], CfOptions(static_cast<Cf>(i), options, cache));
  }
  // RocksDB always has "default"; we keep it (unused) so the table above stays the contract.
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s =
      rocksdb::DB::Open(DbOptions(options, sst_manager), options.path, cfs, &handles, &raw);
  if (!s.ok()) return FromRocksStatus(s, absl::StrCat("open ", options.path));
  std::unique_ptr<rocksdb::DB> db(raw);
  db->DestroyColumnFamilyHandle(handles.back());
  handles.pop_back();
  return std::unique_ptr<Store>(
      std::make_unique<RocksStore>(std::move(db), std::move(handles), options.durability));
}

}  // namespace tokenmeter::storage
