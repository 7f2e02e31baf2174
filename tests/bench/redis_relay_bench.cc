// The Redis peer of the sidecar benchmark: the same two hops, each acked after an fsync, as a
// team would build them from Redis. Producers RPUSH their events (one call of `batch_events`
// events, `window` calls in flight per connection) to a local Redis list; with appendfsync
// always Redis answers only after the AOF fsync, so an answered RPUSH is durable on the first
// hop. A relay thread (the sidecar's job) reads up to `relay_batch_events` queued events with
// LRANGE, applies them to a central Redis with the commands of RunRedisIngest (pipelined,
// `relay_window` batches in flight over `relay_connections` connections, round robin; durable
// there after its AOF fsync), and LTRIMs them from the local list, oldest first, once the
// central Redis answered them all. Several connections because Redis reads at most 16 KiB per
// connection between two AOF fsyncs: over one connection the relay would mostly measure that.
//
// Favourable to Redis, beyond what redis_ingest_bench.cc lists: the relay is a thread of this
// driver (no process of its own, no gRPC), and a relay crash between the central answers and
// the LTRIM would resend events whose increments are not guarded by the SET NX (at least once,
// where the sidecar is exactly once).
#include <poll.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tests/bench/resp_client.h"

namespace tokenmeter::bench {
namespace {

constexpr char kQueueKey[] = "relay:queue";

struct RelayShared {
  const RelayIngestOptions* options = nullptr;
  std::string local_host;
  int local_port = 0;
  std::string central_host;
  int central_port = 0;
  int64_t total_calls = 0;
  std::atomic<int64_t> next_call{0};
  absl::Time stop_at;
  LatencyRecorder latency;
  std::atomic<int64_t> accepted{0};
  std::atomic<int64_t> forwarded{0};  // Answered by the central Redis and trimmed locally.
  std::atomic<int64_t> error_replies{0};
  std::atomic<bool> producers_done{false};
  absl::Mutex mu;
  std::string first_problem ABSL_GUARDED_BY(mu);

  void Problem(const std::string& what) {
    absl::MutexLock lock(&mu);
    if (first_problem.empty()) first_problem = what;
  }
};

// A queued event: "id|tenant|team|user|input|output".
void AppendPush(int producer, int64_t seq, int events, Workload& workload, RespConnection& local) {
  std::vector<std::string> args = {"RPUSH", kQueueKey};
  args.reserve(events + 2);
  for (int i = 0; i < events; ++i) {
    const Actor& a = workload.NextActor();
    const TokenSample t = workload.NextTokens();
    workload.NextModel();
    args.push_back(absl::StrCat("r", producer, "-", seq, "-", i, "|", a.tenant, "|", a.team, "|",
                                a.user, "|", t.input, "|", t.output));
  }
  local.Append(args);
}

// One producer connection: up to `window` RPUSH calls in flight until the plan is exhausted.
void RunProducer(int index, RelayShared* shared) {
  const IngestBenchOptions& o = shared->options->ingest;
  auto connected = RespConnection::Connect(shared->local_host, shared->local_port);
  if (!connected.ok()) return shared->Problem(std::string(connected.status().message()));
  RespConnection& local = **connected;
  Workload workload(index + 1000);
  std::deque<absl::Time> in_flight;  // Send times; one reply per call.
  bool more = true;
  int64_t seq = 0;
  const absl::Time give_up = shared->stop_at + absl::Seconds(60);
  while (more || !in_flight.empty()) {
    while (more && static_cast<int>(in_flight.size()) < o.window) {
      if (absl::Now() >= shared->stop_at || shared->next_call.fetch_add(1) >= shared->total_calls) {
        more = false;
        break;
      }
      AppendPush(index, ++seq, o.batch_events, workload, local);
      in_flight.push_back(absl::Now());
      if (absl::Status s = local.Flush(); !s.ok()) return shared->Problem(std::string(s.message()));
    }
    if (absl::Now() > give_up) return shared->Problem("producer gave up waiting for replies");
    auto polled = local.Poll(absl::Milliseconds(100), [&](const RespReply& reply) {
      if (in_flight.empty()) return shared->Problem("more replies than calls");
      shared->latency.Add(absl::Now() - in_flight.front());
      in_flight.pop_front();
      if (reply.type == RespReply::kInteger) {
        shared->accepted.fetch_add(o.batch_events);
      } else {
        shared->error_replies.fetch_add(1);
        shared->Problem(reply.text);
      }
    });
    if (!polled.ok()) return shared->Problem(std::string(polled.status().message()));
  }
}

// Appends the counting commands of the queued events to `central`; returns how many commands.
int64_t AppendForward(const std::vector<RespReply>& queued, RespConnection& central) {
  const std::string day = absl::StrCat(absl::ToUnixSeconds(absl::Now()) / 86400);
  int64_t commands = 0;
  for (const RespReply& e : queued) {
    const std::vector<std::string> f = absl::StrSplit(e.text, '|');
    if (f.size() != 6) continue;  // Never: the producers wrote them.
    AppendRedisCount(f[0], f[1], f[2], f[3], f[4], f[5], day, central);
    commands += kRedisCountCommands;
  }
  return commands;
}

// The relay: LRANGE from the local list, forward to the central Redis, LTRIM what it answered.
class Relay {
 public:
  explicit Relay(RelayShared* shared) : shared_(shared), o_(*shared->options) {}

  // Returns when the producers are done and the list is empty, or at `give_up`.
  void Run(absl::Time give_up);

 private:
  struct Batch {
    size_t conn;  // Index of the central connection it went over.
    int64_t events;
    int64_t replies_left;
  };
  // Forwards the next queued events, if any. Sets *empty if the list had none.
  absl::Status ForwardMore(bool* full_batch, bool* empty);
  // Waits up to `timeout` for central replies and accounts for them.
  absl::Status PollCentral(absl::Duration timeout);
  void OnReply(size_t conn, const RespReply& reply);
  // LTRIMs the forwarded batches the central Redis answered completely, oldest first.
  absl::Status TrimAnswered();

  RelayShared* const shared_;
  const RelayIngestOptions& o_;
  std::unique_ptr<RespConnection> local_;
  std::vector<std::unique_ptr<RespConnection>> central_;
  std::deque<Batch> in_flight_;
  size_t next_conn_ = 0;
  int64_t read_ = 0;  // Entries at the head of the list read but not trimmed yet.
};

absl::Status Relay::ForwardMore(bool* full_batch, bool* empty) {
  auto got = local_->Call(
      {"LRANGE", kQueueKey, absl::StrCat(read_), absl::StrCat(read_ + o_.relay_batch_events - 1)});
  if (!got.ok()) return got.status();
  const int64_t n = static_cast<int64_t>(got->elements.size());
  *empty = n == 0;
  *full_batch = n == o_.relay_batch_events;
  if (n == 0) return absl::OkStatus();
  const size_t conn = next_conn_++ % central_.size();
  in_flight_.push_back({conn, n, AppendForward(got->elements, *central_[conn])});
  read_ += n;
  return central_[conn]->Flush();
}

absl::Status Relay::PollCentral(absl::Duration timeout) {
  std::vector<pollfd> fds;
  for (const auto& c : central_) fds.push_back({c->fd(), POLLIN, 0});
  const timespec ts = absl::ToTimespec(timeout);
  if (ppoll(fds.data(), fds.size(), &ts, nullptr) <= 0) return absl::OkStatus();
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents == 0) continue;
    auto read = central_[i]->ReadAvailable([&](const RespReply& r) { OnReply(i, r); });
    if (!read.ok()) return read.status();
  }
  return absl::OkStatus();
}

void Relay::OnReply(size_t conn, const RespReply& reply) {
  if (reply.type == RespReply::kError) {
    shared_->error_replies.fetch_add(1);
    shared_->Problem(reply.text);
  }
  for (Batch& b : in_flight_) {  // Redis answers each connection in order.
    if (b.conn == conn && b.replies_left > 0) {
      --b.replies_left;
      return;
    }
  }
  shared_->Problem("more central replies than commands");
}

absl::Status Relay::TrimAnswered() {
  while (!in_flight_.empty() && in_flight_.front().replies_left == 0) {
    const int64_t n = in_flight_.front().events;
    auto trimmed = local_->Call({"LTRIM", kQueueKey, absl::StrCat(n), "-1"});
    if (!trimmed.ok()) return trimmed.status();
    read_ -= n;
    shared_->forwarded.fetch_add(n);
    in_flight_.pop_front();
  }
  return absl::OkStatus();
}

void Relay::Run(absl::Time give_up) {
  auto local = RespConnection::Connect(shared_->local_host, shared_->local_port);
  if (!local.ok()) return shared_->Problem(std::string(local.status().message()));
  local_ = *std::move(local);
  for (int i = 0; i < o_.relay_connections; ++i) {
    auto central = RespConnection::Connect(shared_->central_host, shared_->central_port);
    if (!central.ok()) return shared_->Problem(std::string(central.status().message()));
    central_.push_back(*std::move(central));
  }
  while (absl::Now() < give_up) {
    bool full_batch = false;
    if (static_cast<int>(in_flight_.size()) < o_.relay_window) {
      const bool done = shared_->producers_done.load();  // Read before the LRANGE.
      bool empty = false;
      if (absl::Status s = ForwardMore(&full_batch, &empty); !s.ok()) {
        return shared_->Problem(std::string(s.message()));
      }
      if (empty && in_flight_.empty() && done) return;  // Everything accepted is forwarded.
    }
    // Linger 1 ms for replies (or new events) unless a full batch could follow at once.
    const bool room = static_cast<int>(in_flight_.size()) < o_.relay_window;
    if (absl::Status s =
            PollCentral(full_batch && room ? absl::ZeroDuration() : absl::Milliseconds(1));
        !s.ok()) {
      return shared_->Problem(std::string(s.message()));
    }
    if (absl::Status s = TrimAnswered(); !s.ok()) return shared_->Problem(std::string(s.message()));
  }
  shared_->Problem("relay gave up before the local list was empty");
}

// Events the central Redis counted: the tenant day hashes' "req" of today and yesterday.
int64_t CountedEvents(RelayShared& shared) {
  auto central = RespConnection::Connect(shared.central_host, shared.central_port);
  if (!central.ok()) return -1;
  std::set<std::string> tenants;
  for (const Actor& a : Actors()) tenants.insert(a.tenant);
  const int64_t today = absl::ToUnixSeconds(absl::Now()) / 86400;
  int64_t total = 0;
  for (const std::string& tenant : tenants) {
    for (int64_t day : {today - 1, today}) {
      auto got = (*central)->Call({"HGET", absl::StrCat("c:{", tenant, "}:d", day), "req"});
      if (!got.ok()) return -1;
      int64_t req = 0;
      if (got->type == RespReply::kBulk && absl::SimpleAtoi(got->text, &req)) total += req;
    }
  }
  return total;
}

}  // namespace

int RunRedisRelayIngest(const RelayIngestOptions& options) {
  const IngestBenchOptions& o = options.ingest;
  RelayShared shared;
  shared.options = &options;
  if (!SplitHostPort(o.target, &shared.local_host, &shared.local_port) ||
      !SplitHostPort(options.count_target, &shared.central_host, &shared.central_port)) {
    std::fprintf(stderr, "bad redis address %s or %s\n", o.target.c_str(),
                 options.count_target.c_str());
    return 1;
  }
  shared.total_calls = (o.events + o.batch_events - 1) / o.batch_events;
  const absl::Time start = absl::Now();
  shared.stop_at = start + o.max_time;
  Relay relayer(&shared);
  std::thread relay([&] { relayer.Run(shared.stop_at + absl::Seconds(60) + options.drain_time); });
  std::vector<std::thread> producers;
  for (int i = 0; i < o.producers; ++i) producers.emplace_back(RunProducer, i, &shared);
  for (std::thread& t : producers) t.join();
  const double accept_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  shared.producers_done.store(true);
  relay.join();
  const double e2e_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t accepted = shared.accepted.load();
  const int64_t counted = CountedEvents(shared);
  const bool drained = counted >= accepted;
  std::printf(
      "redis relay ingest: %lld events accepted in %.2f s by %d connections x window %d x %d "
      "events/RPUSH: %.0f events/s; RPUSH p50 %.2f ms p99 %.2f ms\n",
      static_cast<long long>(accepted), accept_seconds, o.producers, o.window, o.batch_events,
      accepted / accept_seconds, shared.latency.PercentileMs(50), shared.latency.PercentileMs(99));
  std::printf("  relayed %lld, central Redis counts %lld, after %.2f s: %.0f events/s end to end\n",
              static_cast<long long>(shared.forwarded.load()), static_cast<long long>(counted),
              e2e_seconds, counted / e2e_seconds);
  {
    absl::MutexLock lock(&shared.mu);
    if (!shared.first_problem.empty()) {
      std::printf("  problems: %lld error replies; first: %s\n",
                  static_cast<long long>(shared.error_replies.load()),
                  shared.first_problem.c_str());
    }
  }
  const std::string& p = o.result_prefix;
  PrintResult(p + ".accepted", static_cast<double>(accepted));
  PrintResult(p + ".accept_seconds", accept_seconds);
  PrintResult(p + ".accepted_events_per_s", accepted / accept_seconds);
  PrintResult(p + ".call_p50_ms", shared.latency.PercentileMs(50));
  PrintResult(p + ".call_p99_ms", shared.latency.PercentileMs(99));
  PrintResult(p + ".counted", static_cast<double>(counted));
  PrintResult(p + ".e2e_seconds", e2e_seconds);
  PrintResult(p + ".drained", drained ? 1 : 0);
  PrintResult(p + ".e2e_events_per_s", counted / e2e_seconds);
  return 0;
}

}  // namespace tokenmeter::bench
