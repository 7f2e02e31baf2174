#include "services/aggregator/policy_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "services/aggregator/proto_convert.h"
#include "storage/key_codec.h"
#include "tokenmeter/storage/v1/records.pb.h"

namespace tokenmeter::aggregator {
namespace {

constexpr char kPricesKey[] = "prices";
constexpr size_t kMaxCachedTenants = 100'000;

absl::Status PersistPrices(storage::Store* store, const PriceTable& table) {
  tokenmeter::storage::v1::PriceTableRecord record;
  record.set_version(table.version());
  for (const ModelPrice& p : table.prices()) ToProto(p, record.add_prices());
  storage::WriteSet writes;
  writes.Put(storage::Cf::kMeta, kPricesKey, record.SerializeAsString());
  return store->Write(writes);
}

}  // namespace

PolicyRegistry::PolicyRegistry(storage::Store* store) : store_(store) {
  absl::MutexLock lock(&mu_);
  RebuildLocked();
}

absl::Status PolicyRegistry::Load() {
  std::vector<Policy> loaded;
  absl::Status parse_error;
  absl::Status s = store_->Scan(storage::Cf::kPolicies, "", "\xff", [&](auto, auto value) {
    v1::Policy proto;
    if (!proto.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      parse_error = absl::DataLossError("unparsable stored policy override");
      return false;
    }
    auto policy = FromProto(proto);
    if (!policy.ok()) {
      parse_error = policy.status();
      return false;
    }
    loaded.push_back(*std::move(policy));
    return true;
  });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  auto prices = store_->Get(storage::Cf::kMeta, kPricesKey);
  if (!prices.ok()) return prices.status();
  absl::MutexLock lock(&mu_);
  for (Policy& p : loaded) overrides_[p.selector.tenant].push_back(std::move(p));
  if (prices->has_value()) {
    tokenmeter::storage::v1::PriceTableRecord record;
    if (!record.ParseFromString(**prices)) return absl::DataLossError("unparsable price table");
    std::vector<ModelPrice> list;
    for (const auto& p : record.prices()) list.push_back(FromProto(p));
    auto table = PriceTable::Create(record.version(), std::move(list));
    if (!table.ok()) return table.status();
    prices_ = std::make_shared<PriceTable>(*std::move(table));
  }
  RebuildLocked();
  return absl::OkStatus();
}

void PolicyRegistry::SetFileConfig(ConfigFile config) {
  absl::MutexLock lock(&mu_);
  file_policies_ = std::move(config.policies);
  if (config.prices.has_value() && config.prices->version() > prices_->version()) {
    prices_ = std::make_shared<PriceTable>(*std::move(config.prices));
  }
  RebuildLocked();
}

absl::Status PolicyRegistry::UpsertOverride(Policy policy) {
  policy.source = "override";
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  if (policy.selector.tenant == "*") {
    return absl::InvalidArgumentError(
        "selector.tenant: an override belongs to one tenant; \"*\" is for the policy file");
  }
  v1::Policy proto;
  ToProto(policy, &proto);
  storage::WriteSet writes;
  writes.Put(storage::Cf::kPolicies, storage::PolicyKey(policy.selector.tenant, policy.id),
             proto.SerializeAsString());
  if (absl::Status s = store_->Write(writes); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto& list = overrides_[policy.selector.tenant];
  auto it =
      std::find_if(list.begin(), list.end(), [&](const Policy& p) { return p.id == policy.id; });
  if (it != list.end()) {
    *it = std::move(policy);
  } else {
    list.push_back(std::move(policy));
  }
  RebuildLocked();
  return absl::OkStatus();
}

absl::StatusOr<bool> PolicyRegistry::DeleteOverride(const std::string& tenant,
                                                    const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = overrides_.find(tenant);
    if (it == overrides_.end() || std::none_of(it->second.begin(), it->second.end(),
                                               [&](const Policy& p) { return p.id == id; })) {
      return false;
    }
  }
  storage::WriteSet writes;
  writes.Delete(storage::Cf::kPolicies, storage::PolicyKey(tenant, id));
  if (absl::Status s = store_->Write(writes); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto& list = overrides_[tenant];
  list.erase(std::remove_if(list.begin(), list.end(), [&](const Policy& p) { return p.id == id; }),
             list.end());
  RebuildLocked();
  return true;
}

absl::Status PolicyRegistry::SetPrices(PriceTable prices) {
  {
    absl::MutexLock lock(&mu_);
    if (prices.version() <= prices_->version()) {
      return absl::FailedPreconditionError(absl::StrCat("version: ", prices.version(),
                                                        " is not newer than the current version ",
                                                        prices_->version()));
    }
  }
  if (absl::Status s = PersistPrices(store_, prices); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (prices.version() > prices_->version()) {
    prices_ = std::make_shared<PriceTable>(std::move(prices));
  }
  return absl::OkStatus();
}

std::shared_ptr<const std::vector<Policy>> PolicyRegistry::PoliciesFor(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = cache_.find(tenant);
  if (it != cache_.end()) return it->second;
  auto ov = overrides_.find(tenant);
  auto policies = std::make_shared<const std::vector<Policy>>(EffectivePolicies(
      file_policies_, ov == overrides_.end() ? std::vector<Policy>() : ov->second, tenant));
  // Bounded: dropped on every policy change, and when it outgrows kMaxCachedTenants (callers
  // may name tenants that have no policy at all).
  if (cache_.size() >= kMaxCachedTenants) cache_.clear();
  cache_.emplace(tenant, policies);
  return policies;
}

std::vector<Policy> PolicyRegistry::AllPolicies() {
  absl::MutexLock lock(&mu_);
  std::vector<Policy> all = file_policies_;
  for (const auto& [tenant, list] : overrides_) all.insert(all.end(), list.begin(), list.end());
  return all;
}

std::shared_ptr<const PriceTable> PolicyRegistry::Prices() {
  absl::MutexLock lock(&mu_);
  return prices_;
}

std::shared_ptr<const std::vector<absl::TimeZone>> PolicyRegistry::Zones() {
  absl::MutexLock lock(&mu_);
  return zones_;
}

std::shared_ptr<const RollupPlan> PolicyRegistry::Plan() {
  absl::MutexLock lock(&mu_);
  return plan_;
}

bool PolicyRegistry::HasZone(const std::string& zone_name) {
  absl::MutexLock lock(&mu_);
  return std::find(zone_names_.begin(), zone_names_.end(), zone_name) != zone_names_.end();
}

void PolicyRegistry::RebuildLocked() {
  cache_.clear();
  std::vector<std::string> names = {"UTC"};
  auto add = [&](const Policy& p) {
    if (std::find(names.begin(), names.end(), p.time_zone) == names.end()) {
      names.push_back(p.time_zone);
    }
  };
  for (const Policy& p : file_policies_) add(p);
  for (const auto& [tenant, list] : overrides_) {
    for (const Policy& p : list) add(p);
  }
  auto zones = std::make_shared<std::vector<absl::TimeZone>>();
  for (const std::string& name : names) {
    absl::TimeZone tz;
    // Policies were validated, so their zones load; a zone that vanished from the system
    // database is skipped rather than counted in the wrong zone.
    if (absl::LoadTimeZone(name, &tz)) zones->push_back(tz);
  }
  std::vector<Policy> all = file_policies_;
  for (const auto& [tenant, list] : overrides_) all.insert(all.end(), list.begin(), list.end());
  plan_ = std::make_shared<const RollupPlan>(RollupPlan::ForPolicies(all, *zones));
  zones_ = std::move(zones);
  zone_names_ = std::move(names);
}

}  // namespace tokenmeter::aggregator
