#include "services/aggregator/server.h"

#include <sys/statvfs.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "services/common/log.h"

namespace tokenmeter::aggregator {

absl::StatusOr<std::unique_ptr<AggregatorServer>> AggregatorServer::Start(
    const ServerOptions& options, common::Clock* clock) {
  std::unique_ptr<AggregatorServer> server(new AggregatorServer());
  if (absl::Status s = server->Init(options, clock); !s.ok()) return s;
  return server;
}

absl::Status AggregatorServer::Init(const ServerOptions& options, common::Clock* clock) {
  if (options.shard.count < 1 || options.shard.index < 0 ||
      options.shard.index >= options.shard.count) {
    return absl::InvalidArgumentError(absl::StrCat("shard index ", options.shard.index,
                                                   " is not in [0, ", options.shard.count, ")"));
  }
  storage::StoreOptions store_options;
  store_options.path = options.data_dir;
  store_options.durability = options.durability;
  store_options.max_disk_bytes = options.max_disk_bytes;
  store_options.now = [clock] { return clock->Now(); };
  auto store = storage::OpenRocksStore(store_options);
  if (!store.ok()) return store.status();
  store_ = *std::move(store);
  registry_ = std::make_unique<PolicyRegistry>(store_.get());
  if (absl::Status s = registry_->Load(); !s.ok()) return s;
  if (!options.policy_file.empty()) {
    watcher_ = std::make_unique<PolicyFileWatcher>(
        options.policy_file, options.policy_poll_interval,
        [this](ConfigFile config) { registry_->SetFileConfig(std::move(config)); });
    if (absl::Status s = watcher_->Start(); !s.ok()) return s;
  }
  quota_ = std::make_unique<QuotaEngine>(store_.get(), registry_.get(), options.shard, clock,
                                         options.quota);
  if (absl::Status s = quota_->Recover(); !s.ok()) return s;
  ingest_ = std::make_unique<IngestEngine>(store_.get(), registry_.get(), options.shard, clock,
                                           options.ingest);
  reader_ = std::make_unique<UsageReader>(store_.get(), registry_.get(), options.shard);
  if (absl::Status s = StartMetrics(options); !s.ok()) return s;
  pool_ = std::make_unique<common::WorkerPool>(options.workers);
  ingest_service_ = std::make_unique<IngestService>(ingest_.get());
  quota_service_ = std::make_unique<QuotaService>(quota_.get(), pool_.get());
  usage_service_ = std::make_unique<UsageService>(reader_.get(), pool_.get(), clock);
  admin_service_ = std::make_unique<AdminService>(
      registry_.get(), reader_.get(), options.shard, pool_.get(),
      [this] { return watcher_ ? watcher_->last_error() : std::string(); });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  // Sidecars ping every 2 s to notice silent network loss; allow it without data in flight.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(ingest_service_.get());
  builder.RegisterService(quota_service_.get());
  builder.RegisterService(usage_service_.get());
  builder.RegisterService(admin_service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  expiry_thread_ =
      std::thread([this, interval = options.expiry_interval] { ExpiryLoop(interval); });
  common::Log(common::LogLevel::kInfo, "shard serving",
              {{"listen", options.listen},
               {"port", absl::StrCat(port_)},
               {"metrics_port", absl::StrCat(metrics_port())},
               {"shard", absl::StrCat(options.shard.index, "/", options.shard.count)},
               {"data_dir", options.data_dir}});
  return absl::OkStatus();
}

absl::Status AggregatorServer::StartMetrics(const ServerOptions& options) {
  registry_metrics_ = std::make_unique<common::Registry>();
  metrics_ = std::make_unique<AggregatorMetrics>(registry_metrics_.get(), options.usage_labels);
  registry_metrics_
      ->AddGauge("tokenmeter_build_info", "Build of this process; always 1.",
                 {"version", "component"})
      .WithLabels({TOKENMETER_VERSION, "aggregator"})
      .Set(1);
  ingest_->set_metrics(metrics_.get());
  quota_->set_metrics(metrics_.get());
  metrics_->storage_max_disk_bytes.Set(static_cast<double>(options.max_disk_bytes));
  registry_metrics_->AddCollector([this, dir = options.data_dir] {
    struct statvfs fs;
    if (statvfs(dir.c_str(), &fs) == 0) {
      metrics_->storage_disk_available_bytes.Set(static_cast<double>(fs.f_bavail) *
                                                 static_cast<double>(fs.f_frsize));
    }
    const storage::StoreStats stats = store_->Stats();
    metrics_->storage_live_sst_bytes.Set(static_cast<double>(stats.live_sst_bytes));
    metrics_->storage_memtable_bytes.Set(static_cast<double>(stats.memtable_bytes));
    metrics_->storage_pending_compaction_bytes.Set(
        static_cast<double>(stats.pending_compaction_bytes));
    metrics_->storage_write_stopped.Set(stats.write_stopped ? 1 : 0);
    metrics_->quota_open_reservations.Set(static_cast<double>(quota_->open_reservations()));
    metrics_->policy_count.Set(static_cast<double>(registry_->AllPolicies().size()));
    if (watcher_) {
      metrics_->policy_reloads_ok.Mirror(static_cast<double>(watcher_->reload_successes()));
      metrics_->policy_reloads_failed.Mirror(static_cast<double>(watcher_->reload_failures()));
    }
  });
  if (options.metrics_listen.empty()) return absl::OkStatus();
  auto http = common::HttpServer::Start(options.metrics_listen, registry_metrics_.get(), [this] {
    return store_->Stats().write_stopped ? std::string("storage stopped writes (stall)")
                                         : std::string();
  });
  if (!http.ok()) return http.status();
  http_ = *std::move(http);
  return absl::OkStatus();
}

void AggregatorServer::ExpiryLoop(absl::Duration interval) {
  while (!stop_expiry_.WaitForNotificationWithTimeout(interval)) {
    auto expired = quota_->ExpireDue();
    if (!expired.ok()) {
      common::Log(common::LogLevel::kWarn, "reservation expiry failed; retrying",
                  {{"error", std::string(expired.status().message())}});
    }
  }
}

void AggregatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    ingest_service_->Drain();
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
    server_->Wait();
  }
  if (expiry_thread_.joinable()) {
    stop_expiry_.Notify();
    expiry_thread_.join();
  }
  http_.reset();
  watcher_.reset();
  pool_.reset();
  if (ingest_) ingest_->Stop();
  quota_.reset();
  ingest_.reset();
  store_.reset();  // Closes RocksDB.
  common::Log(common::LogLevel::kInfo, "shard stopped");
}

AggregatorServer::~AggregatorServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace tokenmeter::aggregator
