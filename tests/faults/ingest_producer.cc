#include "tests/faults/ingest_producer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

namespace tokenmeter::faults {
namespace {

constexpr size_t kRetryPoolSize = 1000;  // Recently acked events a retry is drawn from.
constexpr size_t kMaxErrors = 20;
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(20);

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

void Endpoint::Set(std::string target) {
  absl::MutexLock lock(&mu_);
  target_ = std::move(target);
}

std::string Endpoint::Get() const {
  absl::MutexLock lock(&mu_);
  return target_;
}

void Ledger::Add(const v1::UsageEvent& event) {
  absl::MutexLock lock(&mu_);
  if (!ids_[event.tenant()].insert(event.event_id()).second) return;
  UsageSums& sums = totals_[event.tenant()];
  sums.input += event.tokens().input();
  sums.cached_input += event.tokens().cached_input();
  sums.output += event.tokens().output();
  sums.reasoning += event.tokens().reasoning();
  ++sums.requests;
}

std::map<std::string, UsageSums> Ledger::Totals() const {
  absl::MutexLock lock(&mu_);
  return totals_;
}

void ProducerStats::RecordError(const std::string& error) {
  absl::MutexLock lock(&mu_);
  if (errors_.size() < kMaxErrors) errors_.push_back(error);
}

std::vector<std::string> ProducerStats::Errors() const {
  absl::MutexLock lock(&mu_);
  return errors_;
}

IngestProducer::IngestProducer(int index, ProducerOptions options, const Endpoint* endpoint,
                               Ledger* ledger, ProducerStats* stats)
    : index_(index),
      options_(std::move(options)),
      endpoint_(endpoint),
      ledger_(ledger),
      stats_(stats),
      rng_(SplitMix64(static_cast<uint64_t>(index))) {}

bool IngestProducer::Run() {
  absl::Duration backoff = kFirstBackoff;
  for (;;) {  // Bounded by options_.deadline: every stream carries it too.
    if (absl::Now() >= options_.deadline) {
      stats_->RecordError(absl::StrCat(options_.producer_id, ": deadline passed with ",
                                       unacked_.size(), " unacked batches, epoch ", epoch_));
      return false;
    }
    const uint64_t acked_before = next_seq_ - unacked_.size();
    switch (RunStream()) {
      case StreamEnd::kDone:
        return true;
      case StreamEnd::kFatal:
        return false;
      case StreamEnd::kBroken:
        break;
    }
    if (next_seq_ - unacked_.size() > acked_before) backoff = kFirstBackoff;  // Made progress.
    const double jitter = std::uniform_real_distribution<double>(0.5, 1.0)(rng_);
    absl::SleepFor(backoff * jitter);  // Reconnect backoff (not synchronisation).
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

IngestProducer::StreamEnd IngestProducer::RunStream() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // No subchannel in backoff is shared.
  auto channel =
      grpc::CreateCustomChannel(endpoint_->Get(), grpc::InsecureChannelCredentials(), args);
  auto stub = v1::IngestService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(
      absl::ToChronoTime(std::min(options_.deadline, absl::Now() + options_.stream_deadline)));
  auto stream = stub->Ingest(&context);
  ++epoch_;  // A new producer life: epochs only grow.
  stats_->streams.fetch_add(1);
  auto end_stream = [&](StreamEnd end) {
    if (end == StreamEnd::kBroken) stats_->stream_failures.fetch_add(1);
    context.TryCancel();
    (void)stream->Finish();
    return end;
  };
  std::deque<uint64_t> in_flight;  // Seqs sent on this stream, not yet acked, in order.
  uint64_t send_seq = unacked_.empty() ? next_seq_ : unacked_.begin()->first;
  for (;;) {  // Every pass sends or reads; the stream deadline bounds both.
    while (in_flight.size() < static_cast<size_t>(options_.pipeline)) {
      Batch* batch = BatchAt(send_seq);
      if (batch == nullptr) break;
      batch->proto.set_epoch(epoch_);
      if (batch->streams_sent++ > 0) stats_->batches_resent.fetch_add(1);
      if (!stream->Write(batch->proto)) return end_stream(StreamEnd::kBroken);
      in_flight.push_back(send_seq++);
    }
    if (in_flight.empty()) {
      stream->WritesDone();
      (void)stream->Finish();
      return StreamEnd::kDone;
    }
    v1::IngestAck ack;
    if (!stream->Read(&ack)) return end_stream(StreamEnd::kBroken);
    if (!CheckAck(ack, in_flight.front())) return end_stream(StreamEnd::kFatal);
    if (ack.outcome() == v1::IngestAck::UNAVAILABLE) return end_stream(StreamEnd::kBroken);
    Acknowledge(in_flight.front());
    in_flight.pop_front();
  }
}

IngestProducer::Batch* IngestProducer::BatchAt(uint64_t seq) {
  if (auto it = unacked_.find(seq); it != unacked_.end()) return &it->second;
  if (seq != next_seq_ || !WantsMore()) return nullptr;
  MakeBatch();
  return &unacked_.at(seq);
}

bool IngestProducer::WantsMore() const {
  if (events_made_ >= options_.max_events || absl::Now() >= options_.deadline) return false;
  return events_made_ < options_.min_events ||
         (options_.keep_going != nullptr && options_.keep_going->load());
}

void IngestProducer::MakeBatch() {
  const uint64_t seq = next_seq_++;
  Batch& batch = unacked_[seq];
  batch.proto.set_producer_id(options_.producer_id);
  batch.proto.set_seq(seq);
  const int64_t now_ns = absl::ToUnixNanos(absl::Now());
  for (int i = 0; i < options_.batch_events; ++i) {
    v1::UsageEvent* e = batch.proto.add_events();
    *e = MakeEvent(events_made_++);
    e->mutable_occurred_at()->set_seconds(now_ns / 1'000'000'000);
    e->mutable_occurred_at()->set_nanos(static_cast<int32_t>(now_ns % 1'000'000'000));
  }
  for (int i = 0; i < options_.retries_per_batch && !recent_acked_.empty(); ++i) {
    const size_t pick = std::uniform_int_distribution<size_t>(0, recent_acked_.size() - 1)(rng_);
    *batch.proto.add_events() = recent_acked_[pick];
    ++batch.retries;
  }
  stats_->events_made.fetch_add(options_.batch_events);
  stats_->batches_made.fetch_add(1);
}

v1::UsageEvent IngestProducer::MakeEvent(uint64_t k) const {
  const uint64_t h = SplitMix64((static_cast<uint64_t>(index_) << 40) ^ k);
  v1::UsageEvent e;
  e.set_event_id(absl::StrCat(options_.producer_id, "-e", k));
  e.set_tenant(absl::StrCat(options_.tenant_prefix, h % options_.tenants));
  e.set_team(absl::StrCat("team-", (h >> 8) % 3));
  e.set_user(absl::StrCat("user-", (h >> 12) % 5));
  e.set_provider("openai");
  e.set_model("gpt-4o");
  const uint64_t input = 1 + (h >> 20) % 4096;
  const uint64_t output = 1 + (h >> 36) % 2048;
  e.mutable_tokens()->set_input(input);
  e.mutable_tokens()->set_cached_input(input * ((h >> 32) % 4) / 4);
  e.mutable_tokens()->set_output(output);
  e.mutable_tokens()->set_reasoning(output * ((h >> 48) % 3) / 3);
  return e;
}

bool IngestProducer::CheckAck(const v1::IngestAck& ack, uint64_t expected_seq) {
  const std::string where = absl::StrCat(options_.producer_id, " seq ", expected_seq, ": ");
  if (ack.seq() != expected_seq) {
    stats_->RecordError(absl::StrCat(where, "ack out of order (for seq ", ack.seq(), ")"));
    return false;
  }
  const Batch& batch = unacked_.at(expected_seq);
  const uint32_t fresh = static_cast<uint32_t>(batch.proto.events_size() - batch.retries);
  switch (ack.outcome()) {
    case v1::IngestAck::APPLIED:
      if (ack.applied_events() != fresh ||
          ack.duplicate_events() != static_cast<uint32_t>(batch.retries) ||
          ack.rejected_events() != 0 || ack.expected_seq() != expected_seq + 1) {
        stats_->RecordError(absl::StrCat(where, "APPLIED ack ", ack.ShortDebugString(), " for ",
                                         fresh, " fresh and ", batch.retries, " retried events"));
        return false;
      }
      stats_->applied_acks.fetch_add(1);
      stats_->retried_events.fetch_add(ack.duplicate_events());
      return true;
    case v1::IngestAck::DUPLICATE:
      // Only a batch sent on an earlier stream (whose ack was lost) can be a duplicate.
      if (batch.streams_sent < 2 || ack.expected_seq() <= expected_seq) {
        stats_->RecordError(absl::StrCat(where, "unexpected DUPLICATE ", ack.ShortDebugString(),
                                         " after ", batch.streams_sent, " sends"));
        return false;
      }
      stats_->duplicate_acks.fetch_add(1);
      return true;
    case v1::IngestAck::UNAVAILABLE:
      stats_->unavailable_acks.fetch_add(1);
      return true;  // Not durable: the caller reconnects and resends.
    default:
      stats_->RecordError(absl::StrCat(where, "protocol violation ", ack.ShortDebugString()));
      return false;
  }
}

void IngestProducer::Acknowledge(uint64_t seq) {
  auto node = unacked_.extract(seq);
  const v1::IngestBatch& proto = node.mapped().proto;
  const int fresh = proto.events_size() - node.mapped().retries;
  for (int i = 0; i < proto.events_size(); ++i) {
    ledger_->Add(proto.events(i));
    if (i < fresh) recent_acked_.push_back(proto.events(i));
  }
  while (recent_acked_.size() > kRetryPoolSize) recent_acked_.pop_front();
}

}  // namespace tokenmeter::faults
