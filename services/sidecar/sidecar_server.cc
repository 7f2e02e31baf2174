#include "services/sidecar/sidecar_server.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "services/common/log.h"

namespace tokenmeter::sidecar {

absl::StatusOr<std::unique_ptr<SidecarServer>> SidecarServer::Start(const SidecarOptions& options) {
  std::unique_ptr<SidecarServer> server(new SidecarServer());
  if (absl::Status s = server->Init(options); !s.ok()) return s;
  return server;
}

absl::Status SidecarServer::Init(const SidecarOptions& options) {
  if (options.shard_targets.empty()) return absl::InvalidArgumentError("no shard targets");
  if (options.listen.empty() && options.unix_socket.empty()) {
    return absl::InvalidArgumentError("give --listen and/or --unix-socket");
  }
  auto queue = LocalQueue::Open(
      {options.data_dir, options.max_queue_bytes, static_cast<int>(options.shard_targets.size())});
  if (!queue.ok()) return queue.status();
  queue_ = *std::move(queue);
  shards_ = std::make_unique<ShardChannels>(options.shard_targets);
  for (int i = 0; i < shards_->size(); ++i) {
    senders_.push_back(std::make_unique<ShardSender>(i, shards_->target(i), shards_->channel(i),
                                                     queue_.get(), options.sender));
  }
  pool_ = std::make_unique<common::WorkerPool>(options.workers);
  policies_ = std::make_unique<PolicyCache>(shards_.get(), options.default_failure_mode,
                                            options.policy_refresh);
  quota_ = std::make_unique<QuotaProxy>(shards_.get(), queue_.get(), policies_.get(), pool_.get(),
                                        options.quota_deadline);
  report_ =
      std::make_unique<ReportService>(shards_.get(), queue_.get(), pool_.get(), options.limits,
                                      [this](int shard) { senders_[shard]->Wake(); });
  retrier_ = std::make_unique<DeferredCallRetrier>(shards_.get(), queue_.get(), absl::Seconds(1));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.listen.empty()) {
    builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port_);
  }
  if (!options.unix_socket.empty()) {
    unlink(options.unix_socket.c_str());  // A stale socket of a killed sidecar.
    builder.AddListeningPort("unix:" + options.unix_socket, grpc::InsecureServerCredentials());
  }
  builder.RegisterService(report_.get());
  builder.RegisterService(quota_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || (!options.listen.empty() && port_ == 0)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, " ", options.unix_socket));
  }
  for (auto& sender : senders_) sender->Start();
  registry_ = std::make_unique<common::Registry>();
  registry_
      ->AddGauge("tokenmeter_build_info", "Build of this process; always 1.",
                 {"version", "component"})
      .WithLabels({TOKENMETER_VERSION, "sidecar"})
      .Set(1);
  metrics_ = std::make_unique<SidecarMetrics>(registry_.get(), queue_.get(), &senders_,
                                              quota_.get(), report_.get());
  if (!options.metrics_listen.empty()) {
    auto http = common::HttpServer::Start(options.metrics_listen, registry_.get(), [] {
      return std::string();  // Ready once serving: the queue accepts while shards are down.
    });
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
  }
  common::Log(common::LogLevel::kInfo, "sidecar serving",
              {{"listen", options.listen},
               {"port", absl::StrCat(port_)},
               {"metrics_port", absl::StrCat(metrics_port())},
               {"unix_socket", options.unix_socket},
               {"producer_id", queue_->producer_id()},
               {"epoch", absl::StrCat(queue_->epoch())},
               {"shards", absl::StrJoin(options.shard_targets, ",")}});
  return absl::OkStatus();
}

void SidecarServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  http_.reset();
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
    server_->Wait();
  }
  pool_.reset();
  retrier_.reset();
  for (auto& sender : senders_) sender->Stop();
  policies_.reset();
  common::Log(common::LogLevel::kInfo, "sidecar stopped");
}

SidecarServer::~SidecarServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace tokenmeter::sidecar
