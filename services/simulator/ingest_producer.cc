#include "services/simulator/ingest_producer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"

namespace tokenmeter::simulator {
namespace {

using common::Log;
using common::LogLevel;

absl::Duration Backoff(int attempt) {
  return std::min(absl::Milliseconds(100) * (1 << std::min(attempt, 5)), absl::Seconds(2));
}

}  // namespace

IngestProducer::IngestProducer(const common::ShardRouter* router, Stats* stats,
                               ProducerOptions options)
    : router_(router), stats_(stats), options_(std::move(options)) {
  for (int i = 0; i < router_->shard_count(); ++i) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->index = i;
  }
  for (auto& shard : shards_) {
    Shard* s = shard.get();
    s->thread = std::thread([this, s] { SenderLoop(*s); });
  }
}

IngestProducer::~IngestProducer() {
  if (!stopped_) Stop(absl::ZeroDuration());
}

void IngestProducer::Add(v1::UsageEvent event) {
  Shard& shard = *shards_[router_->OwnerOf(event.tenant())];
  {
    absl::MutexLock lock(&shard.mu);
    if (!stopping_.HasBeenNotified() && shard.queue.size() < options_.max_queued_events) {
      shard.queue.push_back(std::move(event));
      ++shard.unacked;
      return;
    }
  }
  stats_->RecordIngestDropped(1);
}

uint64_t IngestProducer::Stop(absl::Duration flush) {
  stopped_ = true;
  stopping_.Notify();
  const absl::Time give_up = absl::Now() + flush;
  uint64_t unacked = 0;
  // Bounded by `flush`: poll until every shard's events are acked.
  for (;;) {
    unacked = 0;
    for (auto& shard : shards_) {
      absl::MutexLock lock(&shard->mu);
      unacked += shard->unacked;
    }
    if (unacked == 0 || absl::Now() >= give_up) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  cancelled_.Notify();
  for (auto& shard : shards_) {
    absl::MutexLock lock(&shard->mu);
    if (shard->context != nullptr) shard->context->TryCancel();
  }
  for (auto& shard : shards_) shard->thread.join();
  return unacked;
}

bool IngestProducer::WaitOrCancelled(absl::Duration d) {
  return !cancelled_.WaitForNotificationWithTimeout(d);
}

bool IngestProducer::NextBatch(Shard& shard, uint64_t seq, v1::IngestBatch* batch) {
  batch->Clear();
  const size_t max = static_cast<size_t>(options_.max_batch_events);
  absl::MutexLock lock(&shard.mu);
  auto full = [&shard, max]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) { return shard.queue.size() >= max; };
  if (!stopping_.HasBeenNotified()) {
    shard.mu.AwaitWithTimeout(absl::Condition(&full), options_.linger);
  }
  if (shard.queue.empty()) return !stopping_.HasBeenNotified();
  batch->set_producer_id(options_.producer_id);
  batch->set_epoch(options_.epoch);
  batch->set_seq(seq);
  const size_t n = std::min(max, shard.queue.size());
  for (size_t i = 0; i < n; ++i) {
    *batch->add_events() = std::move(shard.queue.front());
    shard.queue.pop_front();
  }
  return true;
}

void IngestProducer::OpenStream(Shard& shard) {
  shard.stream_context = std::make_unique<grpc::ClientContext>();
  shard.stream_context->set_deadline(absl::ToChronoTime(absl::Now() + options_.stream_deadline));
  {
    absl::MutexLock lock(&shard.mu);
    shard.context = shard.stream_context.get();
  }
  shard.stream = shard.stub->Ingest(shard.stream_context.get());
}

grpc::Status IngestProducer::CloseStream(Shard& shard, bool graceful) {
  if (graceful) shard.stream->WritesDone();
  // Finish() cannot hang: Stop() cancels the context once the flush time is up.
  grpc::Status status = shard.stream->Finish();
  shard.stream.reset();
  {
    absl::MutexLock lock(&shard.mu);
    shard.context = nullptr;
  }
  shard.stream_context.reset();
  return status;
}

bool IngestProducer::HandleAck(Shard& shard, const v1::IngestAck& ack, v1::IngestBatch* batch,
                               uint64_t* seq) {
  stats_->RecordIngestAck(ack);
  switch (ack.outcome()) {
    case v1::IngestAck::APPLIED:
    case v1::IngestAck::DUPLICATE:  // Applied before (a resend after a lost ack).
      return true;
    case v1::IngestAck::UNAVAILABLE:  // Not durable; the shard asks for the same seq again.
      return false;
    case v1::IngestAck::GAP:
      // Stop-and-wait never skips a seq, so the shard lost acked batches (restored from an
      // older backup?). Renumber from what it expects; the lost events cannot be resent.
      Log(LogLevel::kWarn, "shard expects another seq; renumbering",
          {{"shard", absl::StrCat(shard.index)},
           {"seq", absl::StrCat(batch->seq())},
           {"expected_seq", absl::StrCat(ack.expected_seq())}});
      *seq = ack.expected_seq();
      batch->set_seq(*seq);
      return false;
    default:  // FENCED, NOT_OWNER, INVALID: resending cannot help.
      Log(LogLevel::kError, "batch refused; dropping it",
          {{"shard", absl::StrCat(shard.index)},
           {"outcome", v1::IngestAck::Outcome_Name(ack.outcome())},
           {"detail", ack.detail()}});
      stats_->RecordIngestDropped(batch->events_size());
      return true;
  }
}

void IngestProducer::SendUntilDone(Shard& shard, v1::IngestBatch* batch, uint64_t* seq) {
  for (int attempt = 0; !cancelled_.HasBeenNotified(); ++attempt) {
    if (shard.stream == nullptr) OpenStream(shard);
    v1::IngestAck ack;
    if (!shard.stream->Write(*batch) || !shard.stream->Read(&ack)) {
      // The stream broke: the batch may or may not have been applied. Resend it with the same
      // seq on a new stream; the shard's watermark makes a second copy a DUPLICATE.
      stats_->RecordRpcError("Ingest", CloseStream(shard, /*graceful=*/false));
    } else if (HandleAck(shard, ack, batch, seq)) {
      return;
    }
    WaitOrCancelled(Backoff(attempt));
  }
}

void IngestProducer::SenderLoop(Shard& shard) {
  shard.stub = v1::IngestService::NewStub(router_->channel(shard.index));
  uint64_t seq = 1;
  v1::IngestBatch batch;
  // Bounded: ends when stopping with an empty queue, or when cancelled.
  while (!cancelled_.HasBeenNotified() && NextBatch(shard, seq, &batch)) {
    if (batch.events_size() == 0) continue;
    SendUntilDone(shard, &batch, &seq);
    ++seq;
    absl::MutexLock lock(&shard.mu);
    shard.unacked -= batch.events_size();
  }
  if (shard.stream != nullptr) CloseStream(shard, /*graceful=*/true);
}

}  // namespace tokenmeter::simulator
