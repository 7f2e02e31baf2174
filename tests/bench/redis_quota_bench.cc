// The Redis peer of the quota benchmark, as teams build it with Redis: a reserve Lua script that
// checks the tenant/day, team/day and user/minute (sliding, six 10 s sub-buckets) limits against
// used + outstanding and, if all fit, INCRBYs the three outstanding counters and stores the
// reservation with a TTL; a commit script that returns the outstanding amounts, INCRBYs the used
// counters and marks the reservation committed. Both via EVALSHA, pipelined per connection.
//
// Favourable to Redis: one metric (total tokens) per limit instead of tokenmeter's full counter
// records, no per-model scopes, no TTL-expiry sweeper (an expired Redis reservation leaks its
// outstanding amount), no decision returned per limit.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/drivers.h"
#include "tests/bench/resp_client.h"

namespace tokenmeter::bench {
namespace {

// KEYS: 1 tenant day used, 2 team day used, 3..8 user sub-buckets, 9..11 tenant/team/user
// outstanding, 12 reservation. ARGV: estimate, tenant limit, team limit, user limit, ttl ms.
// Returns 1 allowed, 0 denied, 2 repeated reservation id.
constexpr char kReserveScript[] = R"lua(
if redis.call('EXISTS', KEYS[12]) == 1 then return 2 end
local est = tonumber(ARGV[1])
local function num(k) return tonumber(redis.call('GET', k) or '0') end
if num(KEYS[1]) + num(KEYS[9]) + est > tonumber(ARGV[2]) then return 0 end
if num(KEYS[2]) + num(KEYS[10]) + est > tonumber(ARGV[3]) then return 0 end
local u = num(KEYS[11])
for i = 3, 8 do u = u + num(KEYS[i]) end
if u + est > tonumber(ARGV[4]) then return 0 end
for i = 9, 11 do redis.call('INCRBY', KEYS[i], est) end
redis.call('SET', KEYS[12], est, 'PX', ARGV[5])
return 1
)lua";

// KEYS: 1 reservation, 2..4 tenant/team/user outstanding, 5 tenant day used, 6 team day used,
// 7 user current sub-bucket. ARGV: actual, day ttl s, sub-bucket ttl s.
// Returns 1 committed, 2 repeated commit, 0 unknown reservation.
constexpr char kCommitScript[] = R"lua(
local est = redis.call('GET', KEYS[1])
if not est then return 0 end
if est == 'c' then return 2 end
for i = 2, 4 do redis.call('DECRBY', KEYS[i], est) end
for i = 5, 7 do redis.call('INCRBY', KEYS[i], ARGV[1]) end
redis.call('EXPIRE', KEYS[5], ARGV[2])
redis.call('EXPIRE', KEYS[6], ARGV[2])
redis.call('EXPIRE', KEYS[7], ARGV[3])
redis.call('SET', KEYS[1], 'c', 'EX', 86400)
return 1
)lua";

struct Shared {
  const QuotaBenchOptions* options;
  std::string host;
  int port = 0;
  std::string reserve_sha;
  std::string commit_sha;
  std::string id_prefix;
  bool paced = false;
  double rate = 0;  // Paced phases: offered pairs/s.
  absl::Time start;
  absl::Time stop_at;  // No new pair after this.
  absl::Time give_up;  // Pairs still open then are unfinished.
  LatencyRecorder latency;
  LatencyRecorder reserve_latency;
  std::atomic<int64_t> pairs{0};
  std::atomic<int64_t> denied{0};
  std::atomic<int64_t> errors{0};
  absl::Mutex mu;
  std::string first_problem ABSL_GUARDED_BY(mu);
  void Problem(const std::string& what) {
    absl::MutexLock lock(&mu);
    if (first_problem.empty()) first_problem = what;
  }
};

struct PairState {
  absl::Time intended;
  const Actor* actor;
  std::string id;
};

std::string Tag(const Actor& a) { return absl::StrCat("q:{", a.tenant, "}"); }

void AppendReserve(const Shared& shared, const PairState& p, RespConnection& redis) {
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  const std::string tag = Tag(*p.actor);
  const std::string team = absl::StrCat(tag, ":", p.actor->team);
  const std::string user = absl::StrCat(team, ":", p.actor->user);
  std::vector<std::string> args = {"EVALSHA", shared.reserve_sha, "12",
                                   absl::StrCat(tag, ":used:d", now_s / 86400),
                                   absl::StrCat(team, ":used:d", now_s / 86400)};
  for (int64_t b = now_s / 10 - 5; b <= now_s / 10; ++b) {
    args.push_back(absl::StrCat(user, ":used:s", b));
  }
  for (const std::string* scope : {&tag, &team, &user}) args.push_back(*scope + ":out");
  args.push_back(absl::StrCat(tag, ":r:", p.id));
  for (const char* a : {"1500", "1000000000000000", "100000000000000", "1000000000000", "60000"}) {
    args.push_back(a);
  }
  redis.Append(args);
}

void AppendCommit(const Shared& shared, const PairState& p, RespConnection& redis) {
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  const std::string tag = Tag(*p.actor);
  const std::string team = absl::StrCat(tag, ":", p.actor->team);
  const std::string user = absl::StrCat(team, ":", p.actor->user);
  redis.Append({"EVALSHA", shared.commit_sha, "7", absl::StrCat(tag, ":r:", p.id), tag + ":out",
                team + ":out", user + ":out", absl::StrCat(tag, ":used:d", now_s / 86400),
                absl::StrCat(team, ":used:d", now_s / 86400),
                absl::StrCat(user, ":used:s", now_s / 10), "1400", "172800", "70"});
}

// One connection: a FIFO of outstanding requests (Redis answers each connection in order).
class Connection {
 public:
  Connection(int index, Shared* shared, std::unique_ptr<RespConnection> redis)
      : index_(index), shared_(shared), redis_(std::move(redis)), workload_(index + 7) {}

  void StartPair(absl::Time intended);
  absl::Status Flush() { return redis_->Flush(); }
  absl::StatusOr<int> Read() {
    return redis_->ReadAvailable([this](const RespReply& reply) { OnReply(reply); });
  }
  int fd() const { return redis_->fd(); }
  int64_t open() const { return static_cast<int64_t>(fifo_.size()); }
  int64_t open_reserves() const {
    return std::count_if(fifo_.begin(), fifo_.end(), [](const Request& r) { return !r.commit; });
  }

 private:
  struct Request {
    bool commit;
    PairState pair;
  };
  void OnReply(const RespReply& reply);

  const int index_;
  Shared* const shared_;
  const std::unique_ptr<RespConnection> redis_;
  Workload workload_;
  std::deque<Request> fifo_;
  int64_t next_id_ = 0;
};

void Connection::StartPair(absl::Time intended) {
  PairState p{intended, &workload_.NextActor(),
              absl::StrCat(shared_->id_prefix, index_, "-", next_id_++)};
  workload_.NextModel();
  AppendReserve(*shared_, p, *redis_);
  fifo_.push_back({false, std::move(p)});
}

void Connection::OnReply(const RespReply& reply) {
  if (fifo_.empty()) return shared_->Problem("more replies than requests");
  Request r = std::move(fifo_.front());
  fifo_.pop_front();
  const bool again = !shared_->paced && absl::Now() < shared_->stop_at;
  if (!r.commit && reply.type == RespReply::kInteger) {
    shared_->reserve_latency.Add(absl::Now() - r.pair.intended);
  } else if (!r.commit) {
    shared_->reserve_latency.AddUnfinished(1);
  }
  if (reply.type != RespReply::kInteger) {
    shared_->errors.fetch_add(1);
    shared_->latency.AddUnfinished(1);
    shared_->Problem(reply.text);
  } else if (!r.commit && reply.integer != 1) {
    shared_->denied.fetch_add(1);
  } else if (!r.commit) {
    AppendCommit(*shared_, r.pair, *redis_);
    fifo_.push_back({true, std::move(r.pair)});
    return;
  } else {
    shared_->latency.Add(absl::Now() - r.pair.intended);
    shared_->pairs.fetch_add(1);
  }
  if (again) StartPair(absl::Now());
}

// Drives every connection from one thread (like an event-loop gateway): starts pairs (all at
// once for saturation, on schedule when paced), flushes, and polls all sockets for replies.
void DriveConnections(Shared& shared, std::vector<std::unique_ptr<Connection>>& conns) {
  const QuotaBenchOptions& o = *shared.options;
  const absl::Duration interval = absl::Seconds(1) / shared.rate;
  absl::Time next = shared.start;
  int64_t started = 0;
  if (!shared.paced) {
    for (int i = 0; i < o.in_flight; ++i) conns[i % conns.size()]->StartPair(shared.start);
  }
  std::vector<pollfd> fds;
  for (const auto& c : conns) fds.push_back({c->fd(), POLLIN, 0});
  for (;;) {
    const absl::Time now = absl::Now();
    int64_t open = 0;
    for (const auto& c : conns) open += c->open();
    for (; shared.paced && next <= now && next < shared.stop_at && open < o.max_paced_in_flight;
         next += interval, ++open) {
      conns[started++ % conns.size()]->StartPair(next);
    }
    for (const auto& c : conns) {
      if (absl::Status s = c->Flush(); !s.ok()) return shared.Problem(std::string(s.message()));
    }
    const bool pacing = shared.paced && next < shared.stop_at;
    if ((!pacing && open == 0) || now >= shared.give_up) break;
    const absl::Duration wait =
        pacing ? std::clamp(next - absl::Now(), absl::ZeroDuration(), absl::Milliseconds(100))
               : absl::Milliseconds(100);
    const timespec ts = absl::ToTimespec(wait);
    if (ppoll(fds.data(), fds.size(), &ts, nullptr) <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto read = conns[i]->Read();
      if (!read.ok()) return shared.Problem(std::string(read.status().message()));
    }
  }
  // Pairs never started (paced, no room) or still open at give-up are unfinished.
  int64_t unfinished = 0;
  for (; shared.paced && next < shared.stop_at; next += interval) ++unfinished;
  int64_t reserves_unfinished = unfinished;  // Open Commits have their Reserve answered.
  for (const auto& c : conns) {
    unfinished += c->open();
    reserves_unfinished += c->open_reserves();
  }
  shared.latency.AddUnfinished(unfinished);
  shared.reserve_latency.AddUnfinished(reserves_unfinished);
}

absl::StatusOr<std::string> LoadScript(RespConnection& redis, const char* script) {
  auto reply = redis.Call({"SCRIPT", "LOAD", script});
  if (!reply.ok()) return reply.status();
  if (reply->type != RespReply::kBulk) return absl::InternalError(reply->text);
  return reply->text;
}

// Runs one phase (saturation if rate is 0, else paced at `rate`) and returns the pairs/s.
double RunPhase(Shared& shared, const std::string& name, double rate, absl::Duration length) {
  const QuotaBenchOptions& o = *shared.options;
  shared.paced = rate > 0;
  shared.rate = rate;
  std::vector<std::unique_ptr<Connection>> conns;
  for (int i = 0; i < o.connections; ++i) {
    auto redis = RespConnection::Connect(shared.host, shared.port);
    if (!redis.ok()) {
      shared.Problem(std::string(redis.status().message()));
      break;
    }
    conns.push_back(std::make_unique<Connection>(i, &shared, std::move(*redis)));
  }
  shared.start = absl::Now();
  shared.stop_at = shared.start + length;
  shared.give_up = shared.stop_at + (shared.paced ? o.drain_time : absl::Seconds(10));
  if (static_cast<int>(conns.size()) == o.connections) DriveConnections(shared, conns);
  QuotaPhaseReport r;
  r.system = "redis";
  r.phase = name;
  r.pairs = shared.pairs.load();
  r.denied = shared.denied.load();
  r.errors = shared.errors.load();
  r.seconds = absl::ToDoubleSeconds(absl::Now() - shared.start);
  r.latency = &shared.latency;
  r.reserve_latency = &shared.reserve_latency;
  {
    absl::MutexLock lock(&shared.mu);
    r.first_problem = shared.first_problem;
  }
  if (shared.paced) {
    std::printf("redis quota %s: offered %.0f pairs/s for %.1f s\n", name.c_str(), rate,
                absl::ToDoubleSeconds(length));
    PrintResult(absl::StrCat(o.result_prefix, ".", name, "_rate"), rate);
  }
  PrintQuotaPhase(o.result_prefix, r);
  return r.pairs / r.seconds;
}

}  // namespace

int RunRedisQuota(const QuotaBenchOptions& options) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(options.target, &host, &port)) {
    std::fprintf(stderr, "bad redis address %s\n", options.target.c_str());
    return 1;
  }
  std::string reserve_sha;
  std::string commit_sha;
  {
    auto setup = RespConnection::Connect(host, port);
    if (!setup.ok()) {
      std::fprintf(stderr, "%s\n", std::string(setup.status().message()).c_str());
      return 1;
    }
    auto reserve = LoadScript(**setup, kReserveScript);
    auto commit = LoadScript(**setup, kCommitScript);
    if (!reserve.ok() || !commit.ok()) {
      std::fprintf(stderr, "SCRIPT LOAD failed\n");
      return 1;
    }
    reserve_sha = *reserve;
    commit_sha = *commit;
  }
  const std::string nonce = absl::StrCat(absl::ToUnixMillis(absl::Now()));
  struct PhaseSpec {
    std::string name;
    double rate;  // 0 = saturation.
    absl::Duration length;
  };
  // Order as in the tokenmeter driver: saturation, fractional load, fixed rate.
  std::vector<PhaseSpec> phases = {{"saturation", 0, options.saturation_time}};
  for (size_t i = 0; i < phases.size(); ++i) {
    Shared shared;
    shared.options = &options;
    shared.host = host;
    shared.port = port;
    shared.reserve_sha = reserve_sha;
    shared.commit_sha = commit_sha;
    shared.id_prefix = absl::StrCat("bench-", nonce, "-", i, "-");
    const double pairs_per_s = RunPhase(shared, phases[i].name, phases[i].rate, phases[i].length);
    if (i == 0) {
      if (options.half_load_time > absl::ZeroDuration() && pairs_per_s > 0) {
        phases.push_back({LoadPhaseName(options.load_fraction), pairs_per_s * options.load_fraction,
                          options.half_load_time});
      }
      phases.push_back({"paced", options.rate, options.paced_time});
    }
  }
  return 0;
}

}  // namespace tokenmeter::bench
