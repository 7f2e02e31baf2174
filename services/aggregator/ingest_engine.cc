#include "services/aggregator/ingest_engine.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "services/aggregator/proto_convert.h"
#include "services/aggregator/rollup.h"
#include "services/common/validation.h"
#include "storage/key_codec.h"
#include "storage/retention.h"
#include "tokenmeter/storage/v1/records.pb.h"
#include "tokenmeter/v1/admin.pb.h"

namespace tokenmeter::aggregator {

const char* IngestOutcomeName(IngestOutcome outcome) {
  switch (outcome) {
    case IngestOutcome::kApplied:
      return "applied";
    case IngestOutcome::kDuplicate:
      return "duplicate";
    case IngestOutcome::kGap:
      return "gap";
    case IngestOutcome::kFenced:
      return "fenced";
    case IngestOutcome::kNotOwner:
      return "not_owner";
    case IngestOutcome::kInvalid:
      return "invalid";
    case IngestOutcome::kUnavailable:
      return "unavailable";
  }
  return "unknown";
}

// The state of one group of batches applied in one write: producer states as they will be
// once the write lands, the event ids already taken, and the write itself.
class IngestEngine::Group {
 public:
  Group(IngestEngine* engine, absl::Time now)
      : engine_(engine),
        now_(now),
        prices_(engine->registry_->Prices()),
        plan_(engine->registry_->Plan()),
        rollup_(plan_.get()) {}

  IngestResult Process(const IngestBatchInput& batch);
  absl::Status Commit();
  void Publish();  // After a successful Commit: producer states become the engine's.
  // After a successful Commit: what was counted, into the metrics.
  void RecordMetrics(AggregatorMetrics* metrics) const;

 private:
  IngestResult CheckBatch(const IngestBatchInput& batch);
  // Validates and deduplicates the events of an in-order batch, adding what counts.
  absl::Status AddEvents(const IngestBatchInput& batch, IngestResult* result);
  void AddDeadLetter(const IngestBatchInput& batch, const Event& event, const std::string& reason,
                     const absl::Status& error);

  IngestEngine* const engine_;
  const absl::Time now_;
  const std::shared_ptr<const PriceTable> prices_;
  const std::shared_ptr<const RollupPlan> plan_;
  RollupAccumulator rollup_;
  storage::WriteSet writes_;
  absl::flat_hash_map<std::string, ProducerState> producers_;
  absl::flat_hash_set<std::string> taken_ids_;  // Dedup keys counted by this group.
  absl::flat_hash_map<std::string, uint64_t> rejected_by_reason_;
  // Usage per metric label set (only when metrics are on).
  absl::flat_hash_map<std::vector<std::string>, storage::CounterRecord> usage_by_labels_;
};

IngestResult IngestEngine::Group::CheckBatch(const IngestBatchInput& batch) {
  IngestResult r;
  r.seq = batch.seq;
  r.outcome = IngestOutcome::kInvalid;
  if (absl::Status s =
          common::ValidateId(common::IdKind::kProducerId, "producer_id", batch.producer_id);
      !s.ok()) {
    r.detail = std::string(s.message());
    return r;
  }
  if (batch.seq == 0) {
    r.detail = "seq: must be >= 1";
    return r;
  }
  if (batch.events.empty() || batch.events.size() > engine_->options_.max_events_per_batch) {
    r.detail = absl::StrCat("events: a batch holds 1..", engine_->options_.max_events_per_batch,
                            " events, got ", batch.events.size());
    return r;
  }
  for (const Event& e : batch.events) {
    if (!common::ValidateId(common::IdKind::kTenant, "tenant", e.scope.tenant).ok()) continue;
    if (absl::Status s = engine_->shard_.CheckOwner(e.scope.tenant); !s.ok()) {
      r.outcome = IngestOutcome::kNotOwner;
      r.detail = std::string(s.message());
      return r;
    }
  }
  r.outcome = IngestOutcome::kApplied;
  return r;
}

IngestResult IngestEngine::Group::Process(const IngestBatchInput& batch) {
  IngestResult r = CheckBatch(batch);
  if (r.outcome != IngestOutcome::kApplied) return r;
  auto it = producers_.find(batch.producer_id);
  if (it == producers_.end()) {
    auto loaded = engine_->LoadProducer(batch.producer_id);
    if (!loaded.ok()) {
      r.outcome = IngestOutcome::kUnavailable;
      r.detail = std::string(loaded.status().message());
      return r;
    }
    it = producers_.emplace(batch.producer_id, *loaded).first;
  }
  ProducerState& state = it->second;
  r.expected_seq = state.watermark + 1;
  if (batch.epoch < state.epoch) {
    r.outcome = IngestOutcome::kFenced;
    r.detail = absl::StrCat("epoch ", batch.epoch, " is older than epoch ", state.epoch,
                            " already seen for producer ", batch.producer_id);
    return r;
  }
  // A newer epoch fences older incarnations from now on, whatever this batch's outcome: a
  // restarted producer's first batches are usually resends answered DUPLICATE.
  bool changed = batch.epoch > state.epoch;
  state.epoch = batch.epoch;
  if (batch.seq <= state.watermark) {
    r.outcome = IngestOutcome::kDuplicate;
  } else if (batch.seq > state.watermark + 1) {
    r.outcome = IngestOutcome::kGap;
    r.detail = absl::StrCat("expected seq ", state.watermark + 1, ", got ", batch.seq);
  } else if (absl::Status s = AddEvents(batch, &r); !s.ok()) {
    r.outcome = IngestOutcome::kUnavailable;
    r.detail = std::string(s.message());
  } else {
    state.watermark = batch.seq;
    r.expected_seq = batch.seq + 1;
    changed = true;
  }
  if (changed) {
    tokenmeter::storage::v1::ProducerRecord record;
    record.set_epoch(state.epoch);
    record.set_watermark(state.watermark);
    writes_.Put(storage::Cf::kProducers, batch.producer_id, record.SerializeAsString());
  }
  return r;
}

absl::Status IngestEngine::Group::AddEvents(const IngestBatchInput& batch, IngestResult* result) {
  // Nothing touches the group's state until the dedup read succeeded: a failed batch is
  // answered UNAVAILABLE and resent, and must leave no dead letters or taken ids behind.
  std::vector<const Event*> fresh;
  std::vector<std::string> keys;
  std::vector<std::pair<const Event*, std::pair<std::string, absl::Status>>> rejected;
  absl::flat_hash_set<std::string> batch_ids;
  const bool validated = batch.validation.size() == batch.events.size();
  for (size_t i = 0; i < batch.events.size(); ++i) {
    const Event& e = batch.events[i];
    std::string reason;
    absl::Status s = validated ? batch.validation[i].first
                               : ValidateEvent(e, engine_->options_.event_limits, now_, &reason);
    if (!s.ok()) {
      rejected.push_back({&e, {validated ? batch.validation[i].second : reason, std::move(s)}});
      continue;
    }
    std::string key = storage::DedupKey(e.scope.tenant, e.event_id);
    if (taken_ids_.contains(key) || !batch_ids.insert(key).second) {
      ++result->duplicate_events;
      continue;
    }
    fresh.push_back(&e);
    keys.push_back(std::move(key));
  }
  std::vector<std::optional<std::string>> stored;
  if (absl::Status s = engine_->store_->MultiGet(storage::Cf::kDedup, keys, &stored); !s.ok()) {
    result->duplicate_events = 0;
    return s;
  }
  for (const auto& [event, why] : rejected) {
    AddDeadLetter(batch, *event, why.first, why.second);
    ++rejected_by_reason_[why.first];
    ++result->rejected_events;
  }
  taken_ids_.insert(keys.begin(), keys.end());
  const std::string expiry = storage::EncodeExpiry(now_ + engine_->options_.dedup_window);
  for (size_t i = 0; i < fresh.size(); ++i) {
    const auto stored_expiry = stored[i] ? storage::DecodeExpiry(*stored[i]) : std::nullopt;
    if (stored_expiry.has_value() && *stored_expiry >= now_) {
      ++result->duplicate_events;
      continue;
    }
    const Event& e = *fresh[i];
    const storage::CounterRecord usage =
        UsageRecord(e.tokens, prices_->Find(e.scope.provider, e.scope.model));
    rollup_.Add(e.scope, e.occurred_at, usage);
    if (engine_->metrics_ != nullptr) {
      usage_by_labels_[engine_->metrics_->UsageLabelValues(e.scope)].Add(usage);
    }
    writes_.Put(storage::Cf::kDedup, std::move(keys[i]), expiry);
    ++result->applied_events;
  }
  return absl::OkStatus();
}

void IngestEngine::Group::AddDeadLetter(const IngestBatchInput& batch, const Event& event,
                                        const std::string& reason, const absl::Status& error) {
  v1::DeadLetter letter;
  ToProto(event, letter.mutable_event());
  letter.set_reason(reason);
  letter.set_detail(std::string(error.message()));
  letter.set_producer_id(batch.producer_id);
  letter.set_received_at_unix_ms(absl::ToUnixMillis(now_));
  writes_.Put(storage::Cf::kDeadLetters,
              storage::DeadLetterKey(absl::ToUnixMillis(now_), ++engine_->dead_letter_seq_),
              letter.SerializeAsString());
}

absl::Status IngestEngine::Group::Commit() {
  rollup_.AppendTo(&writes_);
  if (writes_.empty()) return absl::OkStatus();
  return engine_->store_->Write(writes_);
}

void IngestEngine::Group::Publish() {
  for (auto& [id, state] : producers_) engine_->producers_[id] = state;
}

void IngestEngine::Group::RecordMetrics(AggregatorMetrics* metrics) const {
  for (const auto& [reason, n] : rejected_by_reason_) {
    metrics->ingest_events_rejected.WithLabels({reason}).Inc(static_cast<double>(n));
  }
  for (const auto& [labels, usage] : usage_by_labels_) metrics->RecordUsage(labels, usage);
}

IngestEngine::IngestEngine(storage::Store* store, PolicyRegistry* registry, ShardIdentity shard,
                           common::Clock* clock, IngestOptions options)
    : store_(store),
      registry_(registry),
      shard_(shard),
      clock_(clock),
      options_(std::move(options)),
      // Unique across restarts: dead-letter keys are (ms, seq).
      dead_letter_seq_(static_cast<uint64_t>(absl::ToUnixMicros(clock->Now()))),
      apply_thread_([this] { ApplyLoop(); }) {}

IngestEngine::~IngestEngine() { Stop(); }

void IngestEngine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (apply_thread_.joinable()) apply_thread_.join();
}

void IngestEngine::Validate(IngestBatchInput* batch) const {
  const absl::Time now = clock_->Now();
  batch->validation.clear();
  batch->validation.reserve(batch->events.size());
  for (const Event& e : batch->events) {
    std::string reason;
    absl::Status s = ValidateEvent(e, options_.event_limits, now, &reason);
    batch->validation.emplace_back(std::move(s), std::move(reason));
  }
}

void IngestEngine::Submit(IngestBatchInput batch, Done done) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back({std::move(batch), std::move(done)});
      return;
    }
  }
  IngestResult r;
  r.seq = batch.seq;
  r.outcome = IngestOutcome::kUnavailable;
  r.detail = "shard is shutting down";
  done(std::move(r));
}

void IngestEngine::ApplyLoop() {
  for (;;) {
    std::vector<Pending> group;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](IngestEngine* e)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->stopping_ || !e->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // Stopping and drained.
      size_t events = 0;
      while (!queue_.empty() && (group.empty() || events + queue_.front().batch.events.size() <=
                                                      options_.max_events_per_write)) {
        events += queue_.front().batch.events.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    ApplyGroup(std::move(group));
  }
}

void IngestEngine::ApplyGroup(std::vector<Pending> pending) {
  Group group(this, clock_->Now());
  std::vector<IngestResult> results;
  results.reserve(pending.size());
  for (const Pending& p : pending) results.push_back(group.Process(p.batch));
  const absl::Time start = absl::Now();
  const absl::Status written = group.Commit();
  counters_.writes.fetch_add(1, std::memory_order_relaxed);
  if (written.ok()) {
    group.Publish();
    if (metrics_ != nullptr) group.RecordMetrics(metrics_);
  } else {
    counters_.write_errors.fetch_add(1, std::memory_order_relaxed);
    if (metrics_ != nullptr) metrics_->storage_write_errors.Inc();
  }
  if (metrics_ != nullptr) {
    metrics_->ingest_apply_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    metrics_->ingest_write_batches.Observe(static_cast<double>(pending.size()));
  }
  for (size_t i = 0; i < pending.size(); ++i) {
    IngestResult& r = results[i];
    if (!written.ok() && r.outcome != IngestOutcome::kInvalid &&
        r.outcome != IngestOutcome::kNotOwner) {
      r = IngestResult{r.seq,
                       IngestOutcome::kUnavailable,
                       0,
                       0,
                       0,
                       0,
                       absl::StrCat("not durable, resend: ", written.message())};
    }
    counters_.batches.fetch_add(1, std::memory_order_relaxed);
    if (r.outcome == IngestOutcome::kApplied) {
      counters_.applied_events.fetch_add(r.applied_events, std::memory_order_relaxed);
      counters_.duplicate_events.fetch_add(r.duplicate_events, std::memory_order_relaxed);
      counters_.rejected_events.fetch_add(r.rejected_events, std::memory_order_relaxed);
    } else if (r.outcome == IngestOutcome::kDuplicate) {
      counters_.duplicate_batches.fetch_add(1, std::memory_order_relaxed);
    }
    if (metrics_ != nullptr) {
      metrics_->ingest_batches.WithLabels({IngestOutcomeName(r.outcome)}).Inc();
      metrics_->ingest_bytes.Inc(static_cast<double>(pending[i].batch.wire_bytes));
      if (r.outcome == IngestOutcome::kApplied) {
        metrics_->ingest_events_applied.Inc(r.applied_events);
        metrics_->ingest_events_duplicate.Inc(r.duplicate_events);
      }
    }
    pending[i].done(std::move(r));
  }
}

absl::StatusOr<IngestEngine::ProducerState> IngestEngine::LoadProducer(
    const std::string& producer_id) {
  auto cached = producers_.find(producer_id);
  if (cached != producers_.end()) return cached->second;
  auto stored = store_->Get(storage::Cf::kProducers, producer_id);
  if (!stored.ok()) return stored.status();
  ProducerState state;
  if (stored->has_value()) {
    tokenmeter::storage::v1::ProducerRecord record;
    if (!record.ParseFromString(**stored)) {
      return absl::DataLossError(absl::StrCat("unparsable state of producer ", producer_id));
    }
    state = {record.epoch(), record.watermark()};
  }
  return state;
}

}  // namespace tokenmeter::aggregator
