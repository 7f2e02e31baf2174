#include "services/aggregator/ingest_service.h"

#include <deque>

#include "absl/synchronization/mutex.h"
#include "services/aggregator/proto_convert.h"

namespace tokenmeter::aggregator {
namespace {

v1::IngestAck::Outcome ToProto(IngestOutcome outcome) {
  switch (outcome) {
    case IngestOutcome::kApplied:
      return v1::IngestAck::APPLIED;
    case IngestOutcome::kDuplicate:
      return v1::IngestAck::DUPLICATE;
    case IngestOutcome::kGap:
      return v1::IngestAck::GAP;
    case IngestOutcome::kFenced:
      return v1::IngestAck::FENCED;
    case IngestOutcome::kNotOwner:
      return v1::IngestAck::NOT_OWNER;
    case IngestOutcome::kInvalid:
      return v1::IngestAck::INVALID;
    case IngestOutcome::kUnavailable:
      return v1::IngestAck::UNAVAILABLE;
  }
  return v1::IngestAck::OUTCOME_UNSPECIFIED;
}

IngestBatchInput FromProto(const v1::IngestBatch& batch) {
  IngestBatchInput input;
  input.producer_id = batch.producer_id();
  input.epoch = batch.epoch();
  input.seq = batch.seq();
  input.wire_bytes = batch.ByteSizeLong();
  input.events.reserve(batch.events_size());
  for (const v1::UsageEvent& e : batch.events()) input.events.push_back(aggregator::FromProto(e));
  return input;
}

}  // namespace

// Lifetime: deletes itself in OnDone, which gRPC calls only after Finish; Finish is called
// only when no engine callback is outstanding, so callbacks never see a dead reactor.
class IngestService::Reactor final
    : public grpc::ServerBidiReactor<v1::IngestBatch, v1::IngestAck> {
 public:
  Reactor(IngestService* service, bool draining)
      : service_(service), engine_(service->engine_), draining_(draining) {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shard draining"));
      return;
    }
    StartRead(&batch_);
  }

  void Drain() {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mu_);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    IngestBatchInput input = FromProto(batch_);
    engine_->Validate(&input);  // CPU work on this thread, not on the single apply thread.
    bool read_more;
    {
      absl::MutexLock lock(&mu_);
      // Finished while this read was pending (drain): a read may still complete with data.
      // Neither apply nor ack it; the producer resends it to the next incarnation.
      if (finished_) return;
      ++in_flight_;
      read_more = in_flight_ < IngestService::kWindow && !draining_;
      read_paused_ = !read_more;
    }
    engine_->Submit(std::move(input), [this](IngestResult r) { OnApplied(std::move(r)); });
    if (read_more) StartRead(&batch_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    acks_.pop_front();
    if (!ok) broken_ = true;  // Client gone: drop the remaining acks.
    if (!acks_.empty() && !broken_) {
      StartWrite(&acks_.front());
    } else {
      acks_.clear();
      writing_ = false;
      MaybeFinishLocked();
    }
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&service_->mu_);
      service_->reactors_.erase(this);
    }
    delete this;
  }

 private:
  void OnApplied(IngestResult r) {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (!broken_) {
      v1::IngestAck& ack = acks_.emplace_back();
      ack.set_seq(r.seq);
      ack.set_outcome(ToProto(r.outcome));
      ack.set_expected_seq(r.expected_seq);
      ack.set_applied_events(r.applied_events);
      ack.set_duplicate_events(r.duplicate_events);
      ack.set_rejected_events(r.rejected_events);
      ack.set_detail(std::move(r.detail));
      if (!writing_) {
        writing_ = true;
        StartWrite(&acks_.front());
      }
    }
    if (read_paused_ && !reads_done_ && !draining_) {
      read_paused_ = false;
      StartRead(&batch_);
    }
    MaybeFinishLocked();
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || in_flight_ > 0 || writing_) return;
    if (draining_) {
      // A pending read completes once the call is finished (OnReadDone ignores its data).
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shard draining"));
      return;
    }
    if (!reads_done_) return;  // Also when broken: wait for the pending read to fail.
    finished_ = true;
    Finish(grpc::Status::OK);
  }

  IngestService* const service_;
  IngestEngine* const engine_;
  v1::IngestBatch batch_;
  absl::Mutex mu_;
  std::deque<v1::IngestAck> acks_ ABSL_GUARDED_BY(mu_);  // front() is being written.
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerBidiReactor<v1::IngestBatch, v1::IngestAck>* IngestService::Ingest(
    grpc::CallbackServerContext* context) {
  absl::MutexLock lock(&mu_);
  auto* reactor = new Reactor(this, draining_);
  reactors_.insert(reactor);
  return reactor;
}

void IngestService::Drain() {
  absl::MutexLock lock(&mu_);  // Held: no reactor can finish its OnDone meanwhile.
  draining_ = true;
  for (Reactor* r : reactors_) r->Drain();
}

}  // namespace tokenmeter::aggregator
