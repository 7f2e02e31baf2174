// One sidecar: the local queue, a sender per shard, the Report and Quota services on a unix
// socket and/or loopback TCP, the policy cache and the deferred-call retrier.
// Used by main() and in-process by tests. Start/Shutdown from one thread.
#ifndef TOKENMETER_SERVICES_SIDECAR_SIDECAR_SERVER_H_
#define TOKENMETER_SERVICES_SIDECAR_SIDECAR_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "services/aggregator/event_validation.h"
#include "services/common/http_server.h"
#include "services/common/worker_pool.h"
#include "services/sidecar/local_queue.h"
#include "services/sidecar/quota_proxy.h"
#include "services/sidecar/report_service.h"
#include "services/sidecar/shard_channels.h"
#include "services/sidecar/shard_sender.h"
#include "services/sidecar/sidecar_metrics.h"

namespace tokenmeter::sidecar {

struct SidecarOptions {
  // Loopback TCP address ("127.0.0.1:7500"; port 0 = any) and/or a unix socket path.
  std::string listen = "127.0.0.1:7500";
  std::string unix_socket;
  std::string data_dir;
  std::vector<std::string> shard_targets;
  uint64_t max_queue_bytes = 256ull << 20;
  SenderOptions sender;
  // Deadline of a forwarded quota call. Default: 250 ms.
  absl::Duration quota_deadline = absl::Milliseconds(250);
  aggregator::FailureMode default_failure_mode = aggregator::FailureMode::kOpen;
  absl::Duration policy_refresh = absl::Seconds(30);
  // Threads for blocking work; each blocks in a synced write, so more = bigger fsync groups.
  int workers = 32;
  aggregator::EventLimits limits;
  // host:port of /metrics, /healthz, /readyz ("" = off; port 0 = any).
  std::string metrics_listen;
};

class SidecarServer {
 public:
  static absl::StatusOr<std::unique_ptr<SidecarServer>> Start(const SidecarOptions& options);
  ~SidecarServer();

  int port() const { return port_; }
  int metrics_port() const { return http_ ? http_->port() : 0; }
  LocalQueue* queue() { return queue_.get(); }
  const ShardSender& sender(int shard) const { return *senders_[shard]; }
  const QuotaProxy& quota() const { return *quota_; }
  const ReportService& report() const { return *report_; }

  // Stops accepting calls (open calls get `grace`), then stops the senders. Queued events
  // stay on disk for the next start. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  SidecarServer() = default;
  absl::Status Init(const SidecarOptions& options);

  std::unique_ptr<LocalQueue> queue_;
  std::unique_ptr<ShardChannels> shards_;
  std::vector<std::unique_ptr<ShardSender>> senders_;
  std::unique_ptr<common::WorkerPool> pool_;
  std::unique_ptr<PolicyCache> policies_;
  std::unique_ptr<QuotaProxy> quota_;
  std::unique_ptr<ReportService> report_;
  std::unique_ptr<DeferredCallRetrier> retrier_;
  std::unique_ptr<common::Registry> registry_;
  std::unique_ptr<SidecarMetrics> metrics_;
  std::unique_ptr<common::HttpServer> http_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_SIDECAR_SERVER_H_
