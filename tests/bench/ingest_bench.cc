// tokenmeter ingest benchmark: `producers` IngestService streams, each with up to `window`
// batches in flight, send `events` events in batches; the figure is applied events per second
// of wall time, plus the latency from a batch's send to its (durable) ack.
#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tokenmeter/v1/ingest.grpc.pb.h"

namespace tokenmeter::bench {
namespace {

struct IngestTotals {
  std::atomic<int64_t> applied{0};
  std::atomic<int64_t> duplicate{0};
  std::atomic<int64_t> rejected{0};
  std::atomic<int64_t> not_applied_batches{0};
  absl::Mutex mu;
  std::string first_problem ABSL_GUARDED_BY(mu);

  void Problem(const std::string& what) {
    absl::MutexLock lock(&mu);
    if (first_problem.empty()) first_problem = what;
  }
};

// Shared by the producers: which batch comes next, and when to stop starting new ones.
struct IngestPlan {
  const IngestBenchOptions* options;
  int64_t total_batches;
  std::atomic<int64_t> next_batch{0};
  absl::Time stop_at;
  LatencyRecorder* latency;
  IngestTotals* totals;
};

class Producer {
 public:
  Producer(int index, IngestPlan* plan) : index_(index), plan_(plan), workload_(index + 1000) {}

  // Sends batches until the plan is exhausted, then waits for every ack. Blocks.
  void Run(const std::shared_ptr<grpc::Channel>& channel);

 private:
  void WriteLoop(grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>* stream);
  void ReadLoop(grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>* stream);
  void FillBatch(uint64_t seq, v1::IngestBatch* batch);

  const int index_;
  IngestPlan* const plan_;
  Workload workload_;
  absl::Mutex mu_;
  std::deque<absl::Time> sent_at_ ABSL_GUARDED_BY(mu_);
  bool reader_done_ ABSL_GUARDED_BY(mu_) = false;  // The stream broke or ended.
};

void Producer::FillBatch(uint64_t seq, v1::IngestBatch* batch) {
  batch->set_producer_id(absl::StrCat("bench-producer-", index_));
  batch->set_epoch(1);
  batch->set_seq(seq);
  const int n = plan_->options->batch_events;
  while (batch->events_size() < n) batch->add_events();
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  for (int i = 0; i < n; ++i) {
    FillUsageEvent(workload_, absl::StrCat("p", index_, "-", seq, "-", i), now_s,
                   batch->mutable_events(i));
  }
}

void Producer::WriteLoop(grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>* stream) {
  v1::IngestBatch batch;
  const int window = plan_->options->window;
  for (uint64_t seq = 1;; ++seq) {
    if (absl::Now() >= plan_->stop_at) break;
    if (plan_->next_batch.fetch_add(1) >= plan_->total_batches) break;
    FillBatch(seq, &batch);
    {
      absl::MutexLock lock(&mu_);
      auto has_room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return static_cast<int>(sent_at_.size()) < window || reader_done_;
      };
      mu_.Await(absl::Condition(&has_room));
      if (reader_done_) break;  // No ack will come any more: stop sending.
      sent_at_.push_back(absl::Now());
    }
    if (!stream->Write(batch)) break;  // Stream broken: the reader sees the status.
  }
  stream->WritesDone();
}

void Producer::ReadLoop(grpc::ClientReaderWriter<v1::IngestBatch, v1::IngestAck>* stream) {
  v1::IngestAck ack;
  IngestTotals& totals = *plan_->totals;
  while (stream->Read(&ack)) {
    absl::Time sent;
    {
      absl::MutexLock lock(&mu_);
      if (sent_at_.empty()) {
        totals.Problem("more acks than batches");
        continue;
      }
      sent = sent_at_.front();
      sent_at_.pop_front();
    }
    plan_->latency->Add(absl::Now() - sent);
    if (ack.outcome() != v1::IngestAck::APPLIED) {
      totals.not_applied_batches.fetch_add(1);
      totals.Problem(absl::StrCat("batch ", ack.seq(), ": outcome ",
                                  v1::IngestAck::Outcome_Name(ack.outcome()), " ", ack.detail()));
    }
    totals.applied.fetch_add(ack.applied_events());
    totals.duplicate.fetch_add(ack.duplicate_events());
    totals.rejected.fetch_add(ack.rejected_events());
  }
  absl::MutexLock lock(&mu_);
  reader_done_ = true;
}

void Producer::Run(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::IngestService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(plan_->stop_at + absl::Seconds(60)));
  auto stream = stub->Ingest(&context);
  std::thread reader([&] { ReadLoop(stream.get()); });
  WriteLoop(stream.get());
  reader.join();
  const grpc::Status status = stream->Finish();
  if (!status.ok()) {
    plan_->totals->Problem(absl::StrCat("stream ", index_, ": ", status.error_message()));
  }
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // One TCP connection per producer.
  args.SetMaxSendMessageSize(16 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

int RunTokenmeterIngest(const IngestBenchOptions& options) {
  LatencyRecorder latency;
  IngestTotals totals;
  IngestPlan plan;
  plan.options = &options;
  plan.total_batches = (options.events + options.batch_events - 1) / options.batch_events;
  plan.latency = &latency;
  plan.totals = &totals;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < options.producers; ++i) {
    channels.push_back(NewChannel(options.target));
    if (!channels.back()->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
      std::fprintf(stderr, "cannot connect to %s\n", options.target.c_str());
      return 1;
    }
  }
  std::vector<std::unique_ptr<Producer>> producers;
  for (int i = 0; i < options.producers; ++i) {
    producers.push_back(std::make_unique<Producer>(i, &plan));
  }
  const absl::Time start = absl::Now();
  plan.stop_at = start + options.max_time;
  std::vector<std::thread> threads;
  for (int i = 0; i < options.producers; ++i) {
    threads.emplace_back([&, i] { producers[i]->Run(channels[i]); });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t applied = totals.applied.load();
  std::printf(
      "tokenmeter ingest: %lld events applied in %.2f s by %d streams x window %d x %d "
      "events/batch: %.0f events/s; batch ack p50 %.2f ms p99 %.2f ms\n",
      static_cast<long long>(applied), seconds, options.producers, options.window,
      options.batch_events, applied / seconds, latency.PercentileMs(50), latency.PercentileMs(99));
  {
    absl::MutexLock lock(&totals.mu);
    if (!totals.first_problem.empty()) {
      std::printf("  problems: %lld batches not applied; first: %s\n",
                  static_cast<long long>(totals.not_applied_batches.load()),
                  totals.first_problem.c_str());
    }
  }
  if (totals.duplicate.load() + totals.rejected.load() > 0) {
    std::printf("  %lld duplicate and %lld rejected events\n",
                static_cast<long long>(totals.duplicate.load()),
                static_cast<long long>(totals.rejected.load()));
  }
  const std::string& p = options.result_prefix;
  PrintResult(p + ".events", static_cast<double>(applied));
  PrintResult(p + ".seconds", seconds);
  PrintResult(p + ".events_per_s", applied / seconds);
  PrintResult(p + ".batch_p50_ms", latency.PercentileMs(50));
  PrintResult(p + ".batch_p99_ms", latency.PercentileMs(99));
  return 0;
}

}  // namespace tokenmeter::bench
