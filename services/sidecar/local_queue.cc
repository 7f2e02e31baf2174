#include "services/sidecar/local_queue.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "storage/key_codec.h"
#include "storage/rocks_status.h"

namespace tokenmeter::sidecar {
namespace {

using storage::FromRocksStatus;
using storage::GetBigEndian64;
using storage::PutBigEndian64;

// Key layout (one column family):
//   'e' u32be shard u64be entry  -> u64be enqueued_unix_ms | serialized UsageEvent
//   'b' u32be shard u64be seq    -> u64be first | last | bytes | events
//   'n' u32be shard              -> u64be next batch seq
//   'm' name                     -> producer_id / epoch
std::string ShardKey(char tag, int shard) {
  std::string k(1, tag);
  for (int shift = 24; shift >= 0; shift -= 8)
    k.push_back(static_cast<char>((shard >> shift) & 0xff));
  return k;
}
std::string EntryKey(int shard, uint64_t entry) {
  std::string k = ShardKey('e', shard);
  PutBigEndian64(&k, entry);
  return k;
}
std::string BatchKey(int shard, uint64_t seq) {
  std::string k = ShardKey('b', shard);
  PutBigEndian64(&k, seq);
  return k;
}
int ShardOf(std::string_view key) {
  int shard = 0;
  for (int i = 1; i <= 4; ++i) shard = (shard << 8) | static_cast<unsigned char>(key[i]);
  return shard;
}
std::string U64(uint64_t v) {
  std::string s;
  PutBigEndian64(&s, v);
  return s;
}

std::string NewProducerId() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  char host[64] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string h;
  for (char c : std::string(host)) {
    if (isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') h.push_back(c);
  }
  return absl::StrFormat("sidecar-%s-%016x", h.substr(0, 40), rng());
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalQueue>> LocalQueue::Open(const QueueOptions& options) {
  std::unique_ptr<LocalQueue> queue(new LocalQueue());
  if (absl::Status s = queue->Load(options); !s.ok()) return s;
  return queue;
}

LocalQueue::~LocalQueue() {
  if (db_) db_->Close().PermitUncheckedError();
}

absl::Status LocalQueue::Load(const QueueOptions& options) {
  max_bytes_ = options.max_bytes;
  rocksdb::Options o;
  o.create_if_missing = true;
  o.max_background_jobs = 1;
  o.keep_log_file_num = 3;
  o.write_buffer_size = 16 << 20;
  std::error_code mkdir_error;
  std::filesystem::create_directories(options.path, mkdir_error);  // RocksDB makes one level.
  if (mkdir_error) {
    return absl::UnavailableError(
        absl::StrCat("create ", options.path, ": ", mkdir_error.message()));
  }
  rocksdb::DB* raw = nullptr;
  if (auto s = rocksdb::DB::Open(o, options.path, &raw); !s.ok()) {
    return FromRocksStatus(s, absl::StrCat("open queue ", options.path));
  }
  db_.reset(raw);
  std::string value;
  auto s = db_->Get(rocksdb::ReadOptions(), "mproducer_id", &value);
  if (s.IsNotFound()) {
    producer_id_ = NewProducerId();
  } else if (s.ok()) {
    producer_id_ = value;
  } else {
    return FromRocksStatus(s, "read producer id");
  }
  s = db_->Get(rocksdb::ReadOptions(), "mepoch", &value);
  if (!s.ok() && !s.IsNotFound()) return FromRocksStatus(s, "read epoch");
  epoch_ = (s.ok() && value.size() == 8 ? GetBigEndian64(value.data()) : 0) + 1;
  rocksdb::WriteBatch meta;
  meta.Put("mproducer_id", producer_id_);
  meta.Put("mepoch", U64(epoch_));
  rocksdb::WriteOptions sync;
  sync.sync = true;
  if (s = db_->Write(sync, &meta); !s.ok()) return FromRocksStatus(s, "write epoch");

  absl::MutexLock lock(&mu_);
  shards_.assign(options.shard_count, ShardState());
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string_view k = it->key().ToStringView();
    const std::string_view v = it->value().ToStringView();
    if (k.size() == 9 && k[0] == 'd') {
      next_deferred_ = std::max(next_deferred_, GetBigEndian64(k.data() + 1) + 1);
      continue;
    }
    if (k.empty() || k[0] == 'm' || k[0] == 'r' || k.size() < 5) continue;
    const int shard = ShardOf(k);
    if (shard >= options.shard_count) {
      return absl::FailedPreconditionError(absl::StrCat(
          "queue holds data for shard ", shard, " but --shard-count is ", options.shard_count,
          "; resharding with a non-empty queue is not supported"));
    }
    ShardState& st = shards_[shard];
    if (k[0] == 'e' && k.size() == 13 && v.size() >= 8) {
      next_entry_ = std::max(next_entry_, GetBigEndian64(k.data() + 5) + 1);
      bytes_ += v.size() - 8;
      ++events_;
    } else if (k[0] == 'b' && k.size() == 13 && v.size() == 32) {
      BatchInfo info{GetBigEndian64(v.data()), GetBigEndian64(v.data() + 8),
                     GetBigEndian64(v.data() + 16), GetBigEndian64(v.data() + 24)};
      st.batches[GetBigEndian64(k.data() + 5)] = info;
      st.last_batched = std::max(st.last_batched, info.last);
    } else if (k[0] == 'n' && v.size() == 8) {
      st.next_batch_seq = std::max(st.next_batch_seq, GetBigEndian64(v.data()));
    }
  }
  durable_frontier_ = next_entry_ - 1;
  return FromRocksStatus(it->status(), "load queue");
}

absl::Status LocalQueue::Append(const std::vector<std::pair<int, std::string>>& events) {
  uint64_t total = 0;
  for (const auto& [shard, payload] : events) total += payload.size();
  uint64_t first;
  {
    absl::MutexLock lock(&mu_);
    if (bytes_ + total > max_bytes_) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "local queue full: %d of %d bytes used, %d more requested; the owner shards are not "
          "draining it (see tokenmeter_sidecar_queue_* metrics); retry later with the same "
          "event_ids",
          bytes_, max_bytes_, total));
    }
    first = next_entry_;
    next_entry_ += events.size();
    bytes_ += total;
    events_ += events.size();
    in_flight_[first] = {next_entry_ - 1, false};
  }
  rocksdb::WriteBatch batch;
  const std::string now = U64(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())));
  for (size_t i = 0; i < events.size(); ++i) {
    batch.Put(EntryKey(events[i].first, first + i), now + events[i].second);
  }
  rocksdb::WriteOptions sync;
  sync.sync = true;
  const rocksdb::Status s = db_->Write(sync, &batch);
  absl::MutexLock lock(&mu_);
  if (!s.ok()) {
    bytes_ -= total;
    events_ -= events.size();
  }
  in_flight_[first].second = true;
  while (!in_flight_.empty() && in_flight_.begin()->second.second) {
    durable_frontier_ = in_flight_.begin()->second.first;
    in_flight_.erase(in_flight_.begin());
  }
  if (in_flight_.empty()) durable_frontier_ = next_entry_ - 1;
  return FromRocksStatus(s, "append to local queue");
}

absl::StatusOr<std::vector<std::string>> LocalQueue::ReadEntries(int shard, const BatchInfo& info) {
  std::vector<std::string> payloads;
  const std::string end = EntryKey(shard, info.last + 1);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(EntryKey(shard, info.first)); it->Valid() && it->key().compare(end) < 0;
       it->Next()) {
    payloads.emplace_back(it->value().data() + 8, it->value().size() - 8);
  }
  if (!it->status().ok()) return FromRocksStatus(it->status(), "read batch");
  if (payloads.size() != info.events) {
    return absl::DataLossError(absl::StrCat("batch of shard ", shard, " lost entries: expected ",
                                            info.events, ", found ", payloads.size()));
  }
  return payloads;
}

absl::StatusOr<std::optional<QueuedBatch>> LocalQueue::NextBatch(int shard, uint64_t after_seq,
                                                                 size_t max_events) {
  absl::MutexLock batch_lock(&batch_mu_);
  uint64_t from, frontier, seq;
  {
    absl::MutexLock lock(&mu_);
    ShardState& st = shards_[shard];
    auto existing = st.batches.upper_bound(after_seq);
    if (existing != st.batches.end()) {
      const uint64_t found_seq = existing->first;
      const BatchInfo info = existing->second;
      mu_.Unlock();
      auto payloads = ReadEntries(shard, info);
      mu_.Lock();
      if (!payloads.ok()) return payloads.status();
      return std::optional<QueuedBatch>(QueuedBatch{shard, found_seq, *std::move(payloads)});
    }
    from = st.last_batched + 1;
    frontier = durable_frontier_;
    seq = st.next_batch_seq;
  }
  if (from > frontier) return std::optional<QueuedBatch>();
  QueuedBatch batch{shard, seq, {}};
  BatchInfo info;
  const std::string end = EntryKey(shard, frontier + 1);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(EntryKey(shard, from));
       it->Valid() && it->key().compare(end) < 0 && batch.payloads.size() < max_events;
       it->Next()) {
    const uint64_t entry = GetBigEndian64(it->key().data() + 5);
    if (info.events == 0) info.first = entry;
    info.last = entry;
    info.bytes += it->value().size() - 8;
    ++info.events;
    batch.payloads.emplace_back(it->value().data() + 8, it->value().size() - 8);
  }
  if (!it->status().ok()) return FromRocksStatus(it->status(), "form batch");
  if (info.events == 0) return std::optional<QueuedBatch>();
  rocksdb::WriteBatch record;
  record.Put(BatchKey(shard, seq),
             U64(info.first) + U64(info.last) + U64(info.bytes) + U64(info.events));
  record.Put(ShardKey('n', shard), U64(seq + 1));
  rocksdb::WriteOptions sync;
  sync.sync = true;  // The batch must be durable before it is sent (see header).
  if (auto s = db_->Write(sync, &record); !s.ok()) return FromRocksStatus(s, "persist batch");
  absl::MutexLock lock(&mu_);
  ShardState& st = shards_[shard];
  st.next_batch_seq = seq + 1;
  st.last_batched = info.last;
  st.batches[seq] = info;
  return std::optional<QueuedBatch>(std::move(batch));
}

absl::Status LocalQueue::Ack(int shard, uint64_t seq) {
  absl::MutexLock batch_lock(&batch_mu_);
  BatchInfo info;
  {
    absl::MutexLock lock(&mu_);
    auto it = shards_[shard].batches.find(seq);
    if (it == shards_[shard].batches.end()) return absl::OkStatus();
    info = it->second;
  }
  rocksdb::WriteBatch batch;
  batch.DeleteRange(db_->DefaultColumnFamily(), EntryKey(shard, info.first),
                    EntryKey(shard, info.last + 1));
  batch.Delete(BatchKey(shard, seq));
  // Not synced: a lost ack only means the batch is resent and answered DUPLICATE.
  if (auto s = db_->Write(rocksdb::WriteOptions(), &batch); !s.ok()) {
    return FromRocksStatus(s, "ack batch");
  }
  absl::MutexLock lock(&mu_);
  shards_[shard].batches.erase(seq);
  bytes_ -= std::min(bytes_, info.bytes);
  events_ -= std::min(events_, info.events);
  return absl::OkStatus();
}

QueueStats LocalQueue::Stats() {
  QueueStats stats;
  int shard_count;
  {
    absl::MutexLock lock(&mu_);
    stats.events = events_;
    stats.bytes = bytes_;
    shard_count = static_cast<int>(shards_.size());
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (int shard = 0; shard < shard_count; ++shard) {
    const std::string prefix = ShardKey('e', shard);
    it->Seek(prefix);
    if (it->Valid() && it->key().starts_with(prefix) && it->value().size() >= 8) {
      const absl::Time t =
          absl::FromUnixMillis(static_cast<int64_t>(GetBigEndian64(it->value().data())));
      stats.oldest_enqueued = std::min(stats.oldest_enqueued, t);
    }
  }
  return stats;
}

absl::Status LocalQueue::AddDeferred(uint8_t kind, const std::string& payload) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    id = next_deferred_++;
  }
  std::string key = "d";
  PutBigEndian64(&key, id);
  rocksdb::WriteOptions sync;
  sync.sync = true;
  return FromRocksStatus(db_->Put(sync, key, std::string(1, static_cast<char>(kind)) + payload),
                         "store deferred call");
}

absl::StatusOr<std::vector<LocalQueue::Deferred>> LocalQueue::ListDeferred(size_t max) {
  std::vector<Deferred> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("d"); it->Valid() && it->key().starts_with("d") && out.size() < max; it->Next()) {
    if (it->key().size() != 9 || it->value().empty()) continue;
    out.push_back({GetBigEndian64(it->key().data() + 1), static_cast<uint8_t>(it->value()[0]),
                   std::string(it->value().data() + 1, it->value().size() - 1)});
  }
  if (!it->status().ok()) return FromRocksStatus(it->status(), "list deferred calls");
  return out;
}

absl::Status LocalQueue::RemoveDeferred(uint64_t id) {
  std::string key = "d";
  PutBigEndian64(&key, id);
  return FromRocksStatus(db_->Delete(rocksdb::WriteOptions(), key), "remove deferred call");
}

namespace {
std::string FallbackKey(const std::string& tenant, const std::string& id) {
  return absl::StrCat("r", tenant, std::string(1, '\0'), id);
}
}  // namespace

absl::Status LocalQueue::PutFallbackReservation(const std::string& tenant, const std::string& id,
                                                const std::string& payload) {
  rocksdb::WriteOptions sync;
  sync.sync = true;
  return FromRocksStatus(
      db_->Put(sync, FallbackKey(tenant, id),
               U64(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()))) + payload),
      "store fallback reservation");
}

absl::StatusOr<std::optional<std::string>> LocalQueue::TakeFallbackReservation(
    const std::string& tenant, const std::string& id) {
  std::string value;
  const std::string key = FallbackKey(tenant, id);
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok() || value.size() < 8) return FromRocksStatus(s, "read fallback reservation");
  // Not synced: if the delete is lost, a repeated commit produces the same event_id, which the
  // shard counts once.
  if (s = db_->Delete(rocksdb::WriteOptions(), key); !s.ok()) {
    return FromRocksStatus(s, "delete fallback reservation");
  }
  return std::optional<std::string>(value.substr(8));
}

absl::StatusOr<int> LocalQueue::DropFallbackReservationsBefore(absl::Time cutoff) {
  int dropped = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("r"); it->Valid() && it->key().starts_with("r"); it->Next()) {
    if (it->value().size() < 8) continue;
    const absl::Time at =
        absl::FromUnixMillis(static_cast<int64_t>(GetBigEndian64(it->value().data())));
    if (at >= cutoff) continue;
    if (db_->Delete(rocksdb::WriteOptions(), it->key()).ok()) ++dropped;
  }
  if (!it->status().ok()) return FromRocksStatus(it->status(), "scan fallback reservations");
  return dropped;
}

}  // namespace tokenmeter::sidecar
