// The simulator's periodic and final reports: per tenant, the calls allowed and denied per
// team (with the policy that denied them), today's top spending teams as the owner shard
// counts them (UsageService.TopSpenders, LEVEL_TEAM, day window in UTC), and the budget burn
// of every policy limit seen in recent decisions (used / limit of its hottest scope), and how
// many decisions and commits the sidecars had to handle without the owner shard. The traffic
// goes through sidecars; these reads go straight to the owner shards.
//
// Thread-safety: one thread calls Print(); the TopSpenders calls carry a deadline.
#ifndef TOKENMETER_SERVICES_SIMULATOR_REPORT_H_
#define TOKENMETER_SERVICES_SIMULATOR_REPORT_H_

#include <ostream>
#include <string>

#include "absl/time/time.h"
#include "services/common/shard_router.h"
#include "services/simulator/fleet.h"
#include "services/simulator/stats.h"

namespace tokenmeter::simulator {

class Reporter {
 public:
  // Nothing is owned; everything must outlive the reporter. `router` reaches the shards.
  Reporter(const Fleet* fleet, const common::ShardRouter* router, const Stats* stats,
           absl::Duration rpc_timeout, std::ostream* out);

  // Prints one report. Rates cover the time since the previous call (or since construction).
  // `elapsed` and `duration` only label the header.
  void Print(absl::Duration elapsed, absl::Duration duration);

  // Prints the final report and the run's totals. Returns the number of quota decisions plus
  // accepted Report calls (0 means the sidecars never answered).
  uint64_t PrintFinal(absl::Duration elapsed);

 private:
  void PrintTenant(const std::string& tenant, const StatsSnapshot& s);
  void PrintTopSpenders(const std::string& tenant);
  void PrintBudgetBurn(const std::string& tenant, const StatsSnapshot& s);

  const Fleet* const fleet_;
  const common::ShardRouter* const router_;
  const Stats* const stats_;
  const absl::Duration rpc_timeout_;
  std::ostream* const out_;
  StatsSnapshot previous_;
  absl::Time previous_at_;
};

}  // namespace tokenmeter::simulator

#endif  // TOKENMETER_SERVICES_SIMULATOR_REPORT_H_
