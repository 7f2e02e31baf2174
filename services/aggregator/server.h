// One aggregator shard: storage, engines, gRPC services (Ingest, Quota, Usage, Admin,
// grpc.health.v1, reflection), the policy-file watcher and the reservation-expiry loop.
// Used by main() and, in-process on port 0, by integration tests.
//
// Thread-safety: Start/Shutdown from one thread; everything else runs on its own threads.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_SERVER_H_
#define TOKENMETER_SERVICES_AGGREGATOR_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "services/aggregator/aggregator_metrics.h"
#include "services/aggregator/ingest_engine.h"
#include "services/aggregator/ingest_service.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/policy_registry.h"
#include "services/aggregator/quota_engine.h"
#include "services/aggregator/shard_identity.h"
#include "services/aggregator/unary_services.h"
#include "services/aggregator/usage_reader.h"
#include "services/common/clock.h"
#include "services/common/http_server.h"
#include "services/common/metrics.h"
#include "services/common/worker_pool.h"
#include "storage/store.h"

namespace tokenmeter::aggregator {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see AggregatorServer::port()).
  std::string listen = "127.0.0.1:7400";
  std::string data_dir;
  ShardIdentity shard;
  // Optional YAML policy file (hot-reloaded every policy_poll_interval).
  std::string policy_file;
  absl::Duration policy_poll_interval = absl::Seconds(2);
  storage::Durability durability = storage::Durability::kSync;
  uint64_t max_disk_bytes = 0;
  IngestOptions ingest;
  QuotaOptions quota;
  // Worker threads for unary RPCs (they block on fsync; more threads = more group commit).
  int workers = 16;
  int max_message_bytes = 16 << 20;
  absl::Duration expiry_interval = absl::Milliseconds(100);
  // host:port of /metrics, /healthz, /readyz ("" = no HTTP server; port 0 = any).
  std::string metrics_listen;
  UsageLabelOptions usage_labels;
};

class AggregatorServer {
 public:
  // Opens the store, recovers reservations, loads policies and starts serving.
  static absl::StatusOr<std::unique_ptr<AggregatorServer>> Start(const ServerOptions& options,
                                                                 common::Clock* clock);
  ~AggregatorServer();  // Shutdown() if not yet done.

  int port() const { return port_; }
  int metrics_port() const { return http_ ? http_->port() : 0; }

  // Stops accepting calls, gives open calls and streams `grace` to finish, applies every
  // queued batch, then closes RocksDB cleanly. Idempotent.
  void Shutdown(absl::Duration grace);

  QuotaEngine* quota() { return quota_.get(); }
  IngestEngine* ingest() { return ingest_.get(); }

 private:
  AggregatorServer() = default;
  absl::Status Init(const ServerOptions& options, common::Clock* clock);
  absl::Status StartMetrics(const ServerOptions& options);
  void ExpiryLoop(absl::Duration interval);

  std::unique_ptr<common::Registry> registry_metrics_;
  std::unique_ptr<AggregatorMetrics> metrics_;
  std::unique_ptr<common::HttpServer> http_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<PolicyRegistry> registry_;
  std::unique_ptr<PolicyFileWatcher> watcher_;
  std::unique_ptr<IngestEngine> ingest_;
  std::unique_ptr<QuotaEngine> quota_;
  std::unique_ptr<UsageReader> reader_;
  std::unique_ptr<common::WorkerPool> pool_;
  std::unique_ptr<IngestService> ingest_service_;
  std::unique_ptr<QuotaService> quota_service_;
  std::unique_ptr<UsageService> usage_service_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  absl::Notification stop_expiry_;
  std::thread expiry_thread_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_SERVER_H_
