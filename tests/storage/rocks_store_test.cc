#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "storage/key_codec.h"
#include "storage/retention.h"
#include "storage/store.h"

namespace tokenmeter::storage {
namespace {

class RocksStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("rocks_store_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    store_.reset();  // Close first: RocksDB locks its directory.
    StoreOptions options;
    options.path = dir_.string();
    options.now = [this] {
      absl::MutexLock lock(&mu_);
      return now_;
    };
    auto store = OpenRocksStore(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void SetNow(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }
  static CounterRecord Tokens(uint64_t input) {
    CounterRecord r;
    r[kInputTokens] = input;
    r[kRequests] = 1;
    return r;
  }

  std::filesystem::path dir_;
  std::unique_ptr<Store> store_;
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1'800'000'000);
};

TEST_F(RocksStoreTest, WriteSetAppliesAcrossColumnFamiliesAndSurvivesReopen) {
  WriteSet w;
  const std::string counter = CounterKey({"acme", "", "", "", ""}, Granularity::kDay, 86400);
  w.MergeCounter(counter, Tokens(10));
  w.MergeCounter(counter, Tokens(5));
  w.Put(Cf::kDedup, DedupKey("acme", "e1"), EncodeExpiry(absl::InfiniteFuture()));
  w.Put(Cf::kProducers, "p1", "state");
  ASSERT_TRUE(store_->Write(w).ok());
  Open();  // Reopen: everything written is there.
  auto record = store_->GetCounter(counter);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ((*record)[kInputTokens], 15u);
  EXPECT_EQ((*record)[kRequests], 2u);
  auto producer = store_->Get(Cf::kProducers, "p1");
  ASSERT_TRUE(producer.ok());
  EXPECT_EQ(producer->value_or(""), "state");
  // The same key in another family is a different entry.
  auto absent = store_->Get(Cf::kMeta, "p1");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
}

TEST_F(RocksStoreTest, MissingCounterReadsAsZero) {
  auto record = store_->GetCounter(CounterKey({"acme", "", "", "", ""}, Granularity::kDay, 0));
  ASSERT_TRUE(record.ok());
  EXPECT_TRUE(record->IsZero());
}

TEST_F(RocksStoreTest, MalformedCounterValueIsDataLossNotZero) {
  const std::string key = CounterKey({"acme", "", "", "", ""}, Granularity::kDay, 0);
  WriteSet corrupt;
  corrupt.Put(Cf::kCounters, key, "garbage");
  ASSERT_TRUE(store_->Write(corrupt).ok());
  WriteSet add;
  add.MergeCounter(key, Tokens(1));
  ASSERT_TRUE(store_->Write(add).ok());
  auto record = store_->GetCounter(key);
  EXPECT_EQ(record.status().code(), absl::StatusCode::kDataLoss) << record.status();
}

TEST_F(RocksStoreTest, OverflowingCounterIsDataLoss) {
  const std::string key = CounterKey({"acme", "", "", "", ""}, Granularity::kDay, 0);
  CounterRecord huge;
  huge[kInputTokens] = UINT64_MAX;
  WriteSet w;
  w.MergeCounter(key, huge);
  w.MergeCounter(key, Tokens(1));
  ASSERT_TRUE(store_->Write(w).ok());
  EXPECT_EQ(store_->GetCounter(key).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(RocksStoreTest, MultiGetReportsMissingKeys) {
  WriteSet w;
  w.Put(Cf::kDedup, "a", "1");
  w.Put(Cf::kDedup, "c", "3");
  ASSERT_TRUE(store_->Write(w).ok());
  std::vector<std::optional<std::string>> out;
  ASSERT_TRUE(store_->MultiGet(Cf::kDedup, {"a", "b", "c"}, &out).ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].value_or("-"), "1");
  EXPECT_FALSE(out[1].has_value());
  EXPECT_EQ(out[2].value_or("-"), "3");
}

TEST_F(RocksStoreTest, ScanHonoursPrefixAndLimit) {
  WriteSet w;
  for (const char* k : {"a1", "a2", "a3", "b1"}) w.Put(Cf::kMeta, k, k);
  ASSERT_TRUE(store_->Write(w).ok());
  std::string seen;
  ASSERT_TRUE(store_
                  ->Scan(Cf::kMeta, "a", "",
                         [&](auto key, auto) {
                           seen += std::string(key) + ",";
                           return true;
                         })
                  .ok());
  EXPECT_EQ(seen, "a1,a2,a3,");
  seen.clear();
  ASSERT_TRUE(store_
                  ->Scan(Cf::kMeta, "a2", "b1",
                         [&](auto key, auto) {
                           seen += std::string(key) + ",";
                           return true;
                         })
                  .ok());
  EXPECT_EQ(seen, "a2,a3,");
}

TEST_F(RocksStoreTest, RetentionDropsExpiredBucketsAndDedupKeysOnCompaction) {
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  const ScopeKey scope{"acme", "", "", "", ""};
  const std::string ten_s = CounterKey(scope, Granularity::kTenSeconds, absl::ToUnixSeconds(t0));
  const std::string day = CounterKey(scope, Granularity::kDay, absl::ToUnixSeconds(t0));
  WriteSet w;
  w.MergeCounter(ten_s, Tokens(1));
  w.MergeCounter(day, Tokens(1));
  w.Put(Cf::kDedup, "expired", EncodeExpiry(t0 + absl::Hours(1)));
  w.Put(Cf::kDedup, "live", EncodeExpiry(t0 + absl::Hours(48)));
  w.Put(Cf::kDedup, "forever", EncodeExpiry(absl::InfiniteFuture()));
  ASSERT_TRUE(store_->Write(w).ok());
  SetNow(t0 + absl::Hours(3));  // 10 s buckets are kept 2 h by default, days 400 days.
  ASSERT_TRUE(store_->CompactAll().ok());
  auto get = [&](Cf cf, const std::string& key) { return store_->Get(cf, key)->has_value(); };
  EXPECT_FALSE(get(Cf::kCounters, ten_s));
  EXPECT_TRUE(get(Cf::kCounters, day));
  EXPECT_FALSE(get(Cf::kDedup, "expired"));
  EXPECT_TRUE(get(Cf::kDedup, "live"));
  EXPECT_TRUE(get(Cf::kDedup, "forever"));
}

TEST_F(RocksStoreTest, OpensADataDirectoryUnderMissingParents) {
  StoreOptions options;
  options.path = (dir_ / "missing" / "parents" / "shard-0").string();
  auto store = OpenRocksStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  WriteSet w;
  w.Put(Cf::kMeta, "k", "v");
  EXPECT_TRUE((*store)->Write(w).ok());
}

TEST_F(RocksStoreTest, ExpiryEncodingRoundTrips) {
  const absl::Time t = absl::FromUnixSeconds(1'800'000'123);
  EXPECT_EQ(DecodeExpiry(EncodeExpiry(t)), t);
  EXPECT_EQ(DecodeExpiry(EncodeExpiry(absl::InfiniteFuture())), absl::InfiniteFuture());
  EXPECT_FALSE(DecodeExpiry("short").has_value());
}

}  // namespace
}  // namespace tokenmeter::storage
