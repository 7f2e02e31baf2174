#include "services/sidecar/shard_sender.h"

#include <deque>
#include <random>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "services/common/log.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"

namespace tokenmeter::sidecar {
namespace {

using common::Log;
using common::LogLevel;

// Acks arriving from the stream's reader thread.
struct AckInbox {
  absl::Mutex mu;
  std::deque<v1::IngestAck> acks ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
};

}  // namespace

ShardSender::ShardSender(int shard, std::string target, std::shared_ptr<grpc::Channel> channel,
                         LocalQueue* queue, SenderOptions options)
    : shard_(shard),
      target_(std::move(target)),
      channel_(std::move(channel)),
      queue_(queue),
      options_(options) {}

ShardSender::~ShardSender() { Stop(); }

void ShardSender::Start() {
  thread_ = std::thread([this] { Run(); });
}

void ShardSender::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ShardSender::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

void ShardSender::Run() {
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.backoff_initial;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    if (RunStream()) backoff = options_.backoff_initial;
    counters_.connected.store(false);
    // Full jitter: sleep uniformly in [backoff/2, backoff], then double up to the cap.
    const double jitter = 0.5 + 0.5 * std::uniform_real_distribution<double>(0, 1)(rng);
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff * jitter);
    backoff = std::min(backoff * 2, options_.backoff_max);
    counters_.reconnects.fetch_add(1, std::memory_order_relaxed);
  }
}

bool ShardSender::RunStream() {
  v1::IngestService::Stub stub(channel_);
  grpc::ClientContext context;
  auto stream = stub.Ingest(&context);
  auto inbox = std::make_shared<AckInbox>();
  std::thread reader([this, &stream, inbox] {
    v1::IngestAck ack;
    while (stream->Read(&ack)) {
      {
        absl::MutexLock lock(&inbox->mu);
        inbox->acks.push_back(ack);
      }
      Wake();
    }
    {
      absl::MutexLock lock(&inbox->mu);
      inbox->closed = true;
    }
    Wake();
  });
  std::deque<std::pair<uint64_t, absl::Time>> sent;  // (seq, sent at), in order.
  bool progressed = false;
  bool closed_by_peer = false;
  std::string error;
  while (error.empty()) {
    std::deque<v1::IngestAck> acks;
    bool closed = false;
    {
      absl::MutexLock lock(&inbox->mu);
      acks.swap(inbox->acks);
      closed = inbox->closed;
    }
    for (const v1::IngestAck& ack : acks) {
      if (sent.empty() || ack.seq() != sent.front().first) {
        error = absl::StrCat("ack for seq ", ack.seq(), " out of order");
        break;
      }
      if (ack.outcome() != v1::IngestAck::APPLIED && ack.outcome() != v1::IngestAck::DUPLICATE) {
        error = absl::StrCat("batch ", ack.seq(), " ", v1::IngestAck::Outcome_Name(ack.outcome()),
                             ": ", ack.detail());
        break;
      }
      if (absl::Status s = queue_->Ack(shard_, ack.seq()); !s.ok()) {
        error = std::string(s.message());
        break;
      }
      sent.pop_front();
      last_acked_ = ack.seq();
      progressed = true;
      counters_.connected.store(true);
      counters_.batches_acked.fetch_add(1, std::memory_order_relaxed);
      counters_.events_acked.fetch_add(
          ack.applied_events() + ack.duplicate_events() + ack.rejected_events(),
          std::memory_order_relaxed);
    }
    if (!error.empty()) break;
    if (closed) {
      error = "stream closed by the shard";
      closed_by_peer = true;
      break;
    }
    if (!sent.empty() && absl::Now() - sent.front().second > options_.ack_timeout) {
      error = absl::StrCat("no ack for batch ", sent.front().first, " within ",
                           absl::FormatDuration(options_.ack_timeout));
      break;
    }
    bool wrote = false;
    if (static_cast<int>(sent.size()) < options_.window) {
      const uint64_t after = sent.empty() ? last_acked_ : sent.back().first;
      auto batch = queue_->NextBatch(shard_, after, options_.max_batch_events);
      if (!batch.ok()) {
        error = std::string(batch.status().message());
        break;
      }
      if (batch->has_value()) {
        v1::IngestBatch request;
        request.set_producer_id(queue_->producer_id());
        request.set_epoch(queue_->epoch());
        request.set_seq((*batch)->seq);
        for (const std::string& payload : (*batch)->payloads) {
          request.add_events()->ParseFromString(payload);
        }
        if (!stream->Write(request)) {
          error = "stream write failed";
          break;
        }
        if ((*batch)->seq <= highest_sent_) {
          counters_.batches_resent.fetch_add(1, std::memory_order_relaxed);
        }
        highest_sent_ = std::max(highest_sent_, (*batch)->seq);
        counters_.batches_sent.fetch_add(1, std::memory_order_relaxed);
        sent.emplace_back((*batch)->seq, absl::Now());
        wrote = true;
      }
    }
    if (!wrote) {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](ShardSender* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                                 return s->stopping_ || s->woken_;
                               },
                               this),
                           sent.empty() ? options_.idle_poll : absl::Milliseconds(100));
      woken_ = false;
    }
  }
  context.TryCancel();
  reader.join();
  const grpc::Status finished = stream->Finish();
  if (closed_by_peer && !finished.ok()) {  // Say why: refused, unreachable, draining, ...
    error = absl::StrCat("stream ended: ", finished.error_code(), " ", finished.error_message());
  }
  if (!error.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Log(LogLevel::kWarn, "shard stream broken; reconnecting",
        {{"shard", absl::StrCat(shard_)}, {"target", target_}, {"error", error}});
  }
  return progressed;
}

}  // namespace tokenmeter::sidecar
