// A small real cluster for the sidecar fault tests: N tokenmeter-aggregator shards and one
// tokenmeter-sidecar in front of them (--aggregators list), all real processes in one temp
// dir, plus a UsageProbe on the shards. Tenants are a fixed list spread over every shard.
//
// Thread-compatible: drive it from the test's main thread (see ShardProcess).
#ifndef TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLUSTER_H_
#define TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLUSTER_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/faults/sidecar_fault_procs.h"
#include "tests/faults/sidecar_fault_usage.h"

namespace tokenmeter::faults {

struct ClusterOptions {
  std::string aggregator_bin;
  std::string sidecar_bin;
  std::string dir;  // Logs, data dirs, the sidecar's socket.
  int shards = 2;
  // Address the shards bind, and the host the sidecar dials them at. Defaults: loopback.
  std::string listen_host = "127.0.0.1";
  std::string sidecar_shard_host = "127.0.0.1";
  // Data dirs of some shards (default `<dir>/shard<i>`).
  std::map<int, std::string> data_dirs;
  uint64_t max_queue_bytes = 0;  // 0: the sidecar's default.
};

class FaultCluster {
 public:
  explicit FaultCluster(ClusterOptions options) : options_(std::move(options)) {}
  ~FaultCluster();  // StopAll(), errors ignored.

  // Starts the shards, learns which shard owns each tenant (Internal unless every shard owns
  // at least one), then starts the sidecar.
  absl::Status Start();
  // Closes the probe's connections, stops the sidecar, then the shards (SIGTERM, SIGKILL
  // fallback). The first error, if any. (A shard with an idle client connection open takes
  // seconds to stop gracefully, so the test's own clients go first.)
  absl::Status StopAll();
  // Closes the probe's connections (probe() is unusable afterwards).
  void CloseProbe() { probe_.reset(); }

  ShardProcess& shard(int i) { return *shards_[i]; }
  int shard_count() const { return static_cast<int>(shards_.size()); }
  SidecarProcess& sidecar() { return *sidecar_; }
  UsageProbe& probe() { return *probe_; }
  const std::vector<std::string>& tenants() const { return tenants_; }
  std::vector<std::string> TenantsOf(int shard) const;
  // How the sidecar names shard i in its logs: "<sidecar_shard_host>:<port>".
  std::string SidecarTargetOf(int shard) const;
  // Tails of every process's current log, for failure messages.
  std::string LogTails() const;

 private:
  const ClusterOptions options_;
  std::vector<std::unique_ptr<ShardProcess>> shards_;
  std::unique_ptr<SidecarProcess> sidecar_;
  std::unique_ptr<UsageProbe> probe_;
  std::vector<std::string> tenants_;
  std::map<std::string, int> owners_;
};

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_CLUSTER_H_
