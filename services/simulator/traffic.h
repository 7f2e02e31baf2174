// The traffic of the fleet, sent only to sidecars: each team and report-only app talks to
// its own sidecar (Team::sidecar, ReportOnlyApp::sidecar), as a service in a pod would.
// Worker threads make simulated LLM calls the way an LLM gateway would: Reserve(prompt +
// max_tokens) through the sidecar's QuotaService before the call, then Commit(actual) after
// its latency, or Release if the call failed. Denied calls are not made.
//   - chat workers pick a chat team (by weight), a member and a model per call;
//   - agent workers run the agents team's agentic loops: a sequence of growing-context steps,
//     abandoned at the first denial, then restarted after the decision's retry-after hint
//     but at most 250 ms later, the way a runaway agent framework would;
//   - a report-only thread makes usage events at a fixed rate and sends them, every 50 ms, in
//     one ReportService.Report call per sidecar. A failed call is repeated with the same
//     events (same event_ids, so nothing is counted twice) a bounded number of times.
//
// Thread-safety: Start() and Stop() from one thread.
#ifndef TOKENMETER_SERVICES_SIMULATOR_TRAFFIC_H_
#define TOKENMETER_SERVICES_SIMULATOR_TRAFFIC_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "services/simulator/fleet.h"
#include "services/simulator/stats.h"
#include "tokenmeter/v1/quota.grpc.pb.h"
#include "tokenmeter/v1/sidecar.grpc.pb.h"

namespace tokenmeter::simulator {

struct TrafficOptions {
  int chat_workers = 6;
  int agent_workers = 4;
  // Report-only events per second (0 = none).
  double report_rate = 50;
  // Attempts per Report call (1 = no retry); retried on UNAVAILABLE, DEADLINE_EXCEEDED and
  // RESOURCE_EXHAUSTED (sidecar queue full). Default: 5.
  int report_attempts = 5;
  // Share of calls that fail after being reserved (released, not committed).
  double failure_rate = 0.02;
  absl::Duration rpc_timeout = absl::Seconds(2);
  uint32_t chat_ttl_ms = 30000;
  uint32_t agent_ttl_ms = 120000;
  uint64_t seed = 1;
  // Prefix of reservation and event ids, unique per run (e.g. "sim-<pid>-<start ms>").
  std::string id_prefix = "sim";
};

class TrafficDriver {
 public:
  // `sidecars[i]` is the channel to sidecar i; every Team::sidecar and ReportOnlyApp::sidecar
  // of `fleet` must index it. `fleet` and `stats` are not owned and must outlive the driver.
  TrafficDriver(const Fleet* fleet, const std::vector<std::shared_ptr<grpc::Channel>>& sidecars,
                Stats* stats, TrafficOptions options);
  ~TrafficDriver();  // Stop() if running.

  TrafficDriver(const TrafficDriver&) = delete;
  TrafficDriver& operator=(const TrafficDriver&) = delete;

  void Start();
  // Signals every thread, lets calls in progress finish (commit or release), joins.
  void Stop();

 private:
  struct Call {
    const Team* team;
    const Member* member;
    const ModelChoice* model;
    CallShape shape;
    uint32_t ttl_ms;
  };
  enum class CallResult { kDone, kDenied, kError };

  void ChatWorker(int worker);
  void AgentWorker(int worker);
  void ReportOnlyLoop();
  // Sends one Report call, repeating it (same events) on a retryable error.
  void SendReport(int sidecar, const v1::ReportRequest& request);
  // Reserve, simulated latency, Commit or Release. On kDenied sets *retry_after.
  CallResult MakeCall(int worker, const Call& call, absl::Duration* retry_after);
  // Commits the call's actual usage, or releases the reservation if the call failed; once.
  grpc::Status CloseReservation(v1::QuotaService::Stub& stub, const Call& call,
                                const std::string& reservation_id);
  std::unique_ptr<grpc::ClientContext> NewContext() const;
  // Sleeps `d` unless stopping; returns false if stopping.
  bool Pause(absl::Duration d);

  const Fleet* const fleet_;
  Stats* const stats_;
  const TrafficOptions options_;
  std::vector<std::unique_ptr<v1::QuotaService::Stub>> quota_stubs_;    // Per sidecar.
  std::vector<std::unique_ptr<v1::ReportService::Stub>> report_stubs_;  // Per sidecar.
  std::vector<const Team*> chat_teams_;
  std::vector<const Team*> agent_teams_;
  std::atomic<uint64_t> next_id_{0};
  absl::Notification stop_;
  std::vector<std::thread> threads_;
};

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_TRAFFIC_H_
