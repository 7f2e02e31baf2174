// The Redis peer of the ingest benchmark, as most teams build it: per event, SET NX EX of the
// event id (dedup, 7 days) and HINCRBY of input / output / requests on the tenant, team and user
// day counters (10 commands), pipelined one batch of events at a time, `window` batches in
// flight per connection. A batch is acked when its last reply arrives; Redis replies only after
// the AOF write (and, with appendfsync always, its fsync) of the commands.
//
// Favourable to Redis: the increments do not depend on the SET NX result (a correct client
// needs a second round trip or a Lua script), and only 3 scopes x 1 window are counted, where
// tokenmeter rolls up 6 scopes (with and without model) x 4 windows x 8 fields.
#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tests/bench/resp_client.h"

namespace tokenmeter::bench {
namespace {

struct RedisIngestShared {
  const IngestBenchOptions* options;
  std::string host;
  int port = 0;
  int64_t total_batches = 0;
  std::atomic<int64_t> next_batch{0};
  absl::Time stop_at;
  LatencyRecorder latency;
  std::atomic<int64_t> events_done{0};
  std::atomic<int64_t> error_replies{0};
  absl::Mutex mu;
  std::string first_problem ABSL_GUARDED_BY(mu);

  void Problem(const std::string& what) {
    absl::MutexLock lock(&mu);
    if (first_problem.empty()) first_problem = what;
  }
};

constexpr int kCommandsPerEvent = kRedisCountCommands;

void AppendBatch(int producer, int64_t seq, int events, Workload& workload, RespConnection& redis) {
  const std::string day = absl::StrCat(absl::ToUnixSeconds(absl::Now()) / 86400);
  for (int i = 0; i < events; ++i) {
    const Actor& a = workload.NextActor();
    const TokenSample t = workload.NextTokens();
    workload.NextModel();  // Same draws as the tokenmeter driver; Redis counts no model scope.
    AppendRedisCount(absl::StrCat("p", producer, "-", seq, "-", i), a.tenant, a.team, a.user,
                     absl::StrCat(t.input), absl::StrCat(t.output), day, redis);
  }
}

// One connection: keeps up to `window` batches in flight until the plan is exhausted.
void RunConnection(int index, RedisIngestShared* shared) {
  const IngestBenchOptions& options = *shared->options;
  auto connected = RespConnection::Connect(shared->host, shared->port);
  if (!connected.ok()) {
    shared->Problem(std::string(connected.status().message()));
    return;
  }
  RespConnection& redis = **connected;
  Workload workload(index + 1000);
  struct InFlight {
    absl::Time sent;
    int64_t replies_left;
    int events;
  };
  std::deque<InFlight> in_flight;
  bool more = true;
  int64_t seq = 0;
  const absl::Time give_up = shared->stop_at + absl::Seconds(60);
  while (more || !in_flight.empty()) {
    while (more && static_cast<int>(in_flight.size()) < options.window) {
      if (absl::Now() >= shared->stop_at ||
          shared->next_batch.fetch_add(1) >= shared->total_batches) {
        more = false;
        break;
      }
      AppendBatch(index, ++seq, options.batch_events, workload, redis);
      in_flight.push_back(
          {absl::Now(), int64_t{options.batch_events} * kCommandsPerEvent, options.batch_events});
      if (absl::Status s = redis.Flush(); !s.ok()) return shared->Problem(std::string(s.message()));
    }
    if (absl::Now() > give_up) return shared->Problem("gave up waiting for replies");
    auto polled = redis.Poll(absl::Milliseconds(100), [&](const RespReply& reply) {
      if (reply.type == RespReply::kError) {
        shared->error_replies.fetch_add(1);
        shared->Problem(reply.text);
      }
      if (in_flight.empty()) return shared->Problem("more replies than commands");
      if (--in_flight.front().replies_left > 0) return;
      shared->latency.Add(absl::Now() - in_flight.front().sent);
      shared->events_done.fetch_add(in_flight.front().events);
      in_flight.pop_front();
    });
    if (!polled.ok()) return shared->Problem(std::string(polled.status().message()));
  }
}

}  // namespace

void AppendRedisCount(const std::string& event_id, const std::string& tenant,
                      const std::string& team, const std::string& user, const std::string& input,
                      const std::string& output, const std::string& day, RespConnection& redis) {
  const std::string tag = absl::StrCat("{", tenant, "}");
  redis.Append({"SET", absl::StrCat("ev:", tag, ":", event_id), "1", "NX", "EX", "604800"});
  const std::string keys[] = {absl::StrCat("c:", tag, ":d", day),
                              absl::StrCat("c:", tag, ":", team, ":d", day),
                              absl::StrCat("c:", tag, ":", team, ":", user, ":d", day)};
  for (const std::string& key : keys) {
    redis.Append({"HINCRBY", key, "in", input});
    redis.Append({"HINCRBY", key, "out", output});
    redis.Append({"HINCRBY", key, "req", "1"});
  }
}

int RunRedisIngest(const IngestBenchOptions& options) {
  RedisIngestShared shared;
  shared.options = &options;
  if (!SplitHostPort(options.target, &shared.host, &shared.port)) {
    std::fprintf(stderr, "bad redis address %s\n", options.target.c_str());
    return 1;
  }
  shared.total_batches = (options.events + options.batch_events - 1) / options.batch_events;
  const absl::Time start = absl::Now();
  shared.stop_at = start + options.max_time;
  std::vector<std::thread> threads;
  for (int i = 0; i < options.producers; ++i) threads.emplace_back(RunConnection, i, &shared);
  for (std::thread& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t events = shared.events_done.load();
  std::printf(
      "redis ingest: %lld events in %.2f s by %d connections x window %d x %d "
      "events/batch (%d commands/event): %.0f events/s; batch p50 %.2f ms p99 %.2f ms\n",
      static_cast<long long>(events), seconds, options.producers, options.window,
      options.batch_events, kCommandsPerEvent, events / seconds, shared.latency.PercentileMs(50),
      shared.latency.PercentileMs(99));
  {
    absl::MutexLock lock(&shared.mu);
    if (!shared.first_problem.empty()) {
      std::printf("  problems: %lld error replies; first: %s\n",
                  static_cast<long long>(shared.error_replies.load()),
                  shared.first_problem.c_str());
    }
  }
  const std::string& p = options.result_prefix;
  PrintResult(p + ".events", static_cast<double>(events));
  PrintResult(p + ".seconds", seconds);
  PrintResult(p + ".events_per_s", events / seconds);
  PrintResult(p + ".batch_p50_ms", shared.latency.PercentileMs(50));
  PrintResult(p + ".batch_p99_ms", shared.latency.PercentileMs(99));
  return 0;
}

}  // namespace tokenmeter::bench
