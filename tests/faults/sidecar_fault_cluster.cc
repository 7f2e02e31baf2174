#include "tests/faults/sidecar_fault_cluster.h"

#include "absl/strings/str_cat.h"

namespace tokenmeter::faults {
namespace {

constexpr const char* kTenants[] = {"sf-acme",  "sf-globex", "sf-initech", "sf-umbrella",
                                    "sf-hooli", "sf-stark",  "sf-wayne",   "sf-wonka"};

}  // namespace

FaultCluster::~FaultCluster() { (void)StopAll(); }

absl::Status FaultCluster::Start() {
  std::vector<std::string> probe_targets;
  for (int i = 0; i < options_.shards; ++i) {
    ShardConfig config;
    config.binary = options_.aggregator_bin;
    auto dir = options_.data_dirs.find(i);
    config.data_dir =
        dir != options_.data_dirs.end() ? dir->second : absl::StrCat(options_.dir, "/shard", i);
    config.log_dir = options_.dir;
    config.index = i;
    config.count = options_.shards;
    config.listen_host = options_.listen_host;
    shards_.push_back(std::make_unique<ShardProcess>(config));
    if (absl::Status s = shards_.back()->Start(); !s.ok()) return s;
    probe_targets.push_back(shards_.back()->target());
  }
  probe_ = std::make_unique<UsageProbe>(probe_targets);
  std::vector<int> owned(options_.shards, 0);
  for (const char* tenant : kTenants) {
    absl::StatusOr<int> owner = probe_->OwnerOf(tenant);
    if (!owner.ok()) return owner.status();
    tenants_.push_back(tenant);
    owners_[tenant] = *owner;
    ++owned[*owner];
  }
  for (int i = 0; i < options_.shards; ++i) {
    if (owned[i] == 0) {
      return absl::InternalError(absl::StrCat("no test tenant is owned by shard ", i,
                                              ": change the tenant list of the test"));
    }
  }
  SidecarConfig config;
  config.binary = options_.sidecar_bin;
  config.data_dir = options_.dir + "/sidecar";
  config.log_dir = options_.dir;
  config.socket_path = options_.dir + "/sidecar.sock";
  for (int i = 0; i < options_.shards; ++i) config.shard_targets.push_back(SidecarTargetOf(i));
  config.max_queue_bytes = options_.max_queue_bytes;
  sidecar_ = std::make_unique<SidecarProcess>(config);
  return sidecar_->Start();
}

absl::Status FaultCluster::StopAll() {
  absl::Status first;
  probe_.reset();
  if (sidecar_ != nullptr) first.Update(sidecar_->Stop());
  for (auto& shard : shards_) first.Update(shard->Stop());
  return first;
}

std::vector<std::string> FaultCluster::TenantsOf(int shard) const {
  std::vector<std::string> tenants;
  for (const auto& [tenant, owner] : owners_) {
    if (owner == shard) tenants.push_back(tenant);
  }
  return tenants;
}

std::string FaultCluster::SidecarTargetOf(int shard) const {
  return absl::StrCat(options_.sidecar_shard_host, ":", shards_[shard]->port());
}

std::string FaultCluster::LogTails() const {
  std::string out;
  for (const auto& shard : shards_) {
    absl::StrAppend(&out, "--- shard ", shard->index(), " (life ", shard->lives(), ") ---\n",
                    shard->LogTail(), "\n");
  }
  if (sidecar_ != nullptr) {
    absl::StrAppend(&out, "--- sidecar (life ", sidecar_->lives(), ") ---\n", sidecar_->LogTail(),
                    "\n");
  }
  return out;
}

}  // namespace tokenmeter::faults
