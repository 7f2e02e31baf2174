// Policies: which scopes carry which limits, parsed from the GitOps YAML file (with errors that
// name file, line and field), validated the same way when they come from the Admin RPC, and
// matched against a request's scope to find every limit that applies.
//
// Thread-safety: Policy and ConfigFile are plain values. PolicyFileWatcher runs its own
// polling thread and calls its callback from there; its methods are thread-safe.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_POLICY_H_
#define TOKENMETER_SERVICES_AGGREGATOR_POLICY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/aggregator/model.h"
#include "services/aggregator/pricing.h"
#include "storage/key_codec.h"

namespace tokenmeter::aggregator {

// Selector fields: "" = not part of the scope (the level above as a whole), "*" = each
// distinct value separately, anything else = exactly that value. tenant must not be "".
// Levels are contiguous: user needs team, api_key needs user. model is independent.
struct Selector {
  std::string tenant;
  std::string team;
  std::string user;
  std::string api_key;
  std::string model;
};

struct Limit {
  Metric metric = Metric::kTotalTokens;
  WindowKind window = WindowKind::kDay;
  uint64_t amount = 0;
};

struct Policy {
  std::string id;
  Selector selector;
  std::vector<Limit> limits;
  Mode mode = Mode::kEnforce;
  FailureMode failure_mode = FailureMode::kOpen;
  std::vector<uint32_t> warn_percents;  // Ascending, each 1..100.
  std::string time_zone = "UTC";        // IANA name, loadable from the system tz database.
  ExpiryAction on_expiry = ExpiryAction::kRelease;
  std::string source;  // "file:<path>" or "override".
};

// Returns OK or InvalidArgument naming the first bad field ("limits[1].amount: must be > 0").
// Checks: id charset/length, selector shape and charsets, 1..16 limits with amount > 0 and no
// two limits on the same (metric, window), warn percents, and that time_zone loads.
absl::Status ValidatePolicy(const Policy& policy);

// What one configuration file holds.
struct ConfigFile {
  std::vector<Policy> policies;
  std::optional<PriceTable> prices;  // Present if the file has a `prices:` section.
};

// Parses the YAML configuration (format in README, "Policies"). `file_name` is used in
// errors only. On error returns InvalidArgument whose message starts with
// "<file_name>:<line>: <field path>: " (line 1-based), e.g.
// "policies.yaml:14: policies[2].limits[0].window: unknown window \"weekly\"".
// Policy ids must be unique within the file. Every policy's source is "file:<file_name>".
absl::StatusOr<ConfigFile> ParseConfigYaml(std::string_view yaml_text, std::string_view file_name);

// Reads and parses the file at path; NotFound if it cannot be read.
absl::StatusOr<ConfigFile> LoadConfigFile(const std::string& path);

// One limit that applies to a request, and the counter scope it reads and charges.
struct MatchedLimit {
  const Policy* policy = nullptr;  // Points into the vector given to MatchLimits.
  Limit limit;
  storage::ScopeKey counter_scope;
};

// Returns every limit of every policy whose selector matches `scope`, in policy order.
// The counter scope keeps the fields the selector names (a "*" takes the request's value) and
// leaves the others empty. A selector field naming a level the request does not have (e.g.
// api_key "*" for a request without api_key) does not match.
std::vector<MatchedLimit> MatchLimits(const std::vector<Policy>& policies,
                                      const RequestScope& scope);

// Returns the policies in effect for `tenant`: file policies whose selector matches the
// tenant, where an override with the same id replaces the file policy, plus the remaining
// overrides. Order: file order, then overrides by id.
std::vector<Policy> EffectivePolicies(const std::vector<Policy>& file_policies,
                                      const std::vector<Policy>& tenant_overrides,
                                      std::string_view tenant);

// Polls a configuration file and hands every successfully parsed new version to `on_load`.
// A file that fails to parse leaves the previous configuration in force; the error is kept
// (last_error) and logged. The first load happens in Start(), synchronously.
class PolicyFileWatcher {
 public:
  using OnLoad = std::function<void(ConfigFile)>;

  PolicyFileWatcher(std::string path, absl::Duration poll_interval, OnLoad on_load);
  ~PolicyFileWatcher();  // Stops the polling thread.

  PolicyFileWatcher(const PolicyFileWatcher&) = delete;
  PolicyFileWatcher& operator=(const PolicyFileWatcher&) = delete;

  // Loads the file once (returning its error, if any) and starts polling for changes
  // (modification time, size or inode change).
  absl::Status Start();

  // Re-reads the file now, whether or not it changed. Returns the parse error, if any.
  absl::Status ReloadNow();

  // The error of the most recent load attempt, or "" if it succeeded.
  std::string last_error() const;
  // How many loads succeeded / failed since Start().
  uint64_t reload_successes() const;
  uint64_t reload_failures() const;

 private:
  void PollLoop();

  const std::string path_;
  const absl::Duration poll_interval_;
  const OnLoad on_load_;
  mutable absl::Mutex mu_;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  uint64_t successes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_fingerprint_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_POLICY_H_
