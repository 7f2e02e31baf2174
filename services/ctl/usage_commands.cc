// usage / top: read counted usage from the tenant's owner shard.
#include <memory>

#include "absl/strings/str_cat.h"
#include "services/ctl/ctl.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::ctl {
namespace {

struct UsageArgs {
  ScopeArgs scope;
  std::string granularity = "day";
  std::string from, to;
  std::string time_zone = "UTC";
};

struct TopArgs {
  std::string tenant;
  std::string level = "team";
  std::string metric = "total_tokens";
  std::string granularity = "day";
  std::string at;
  std::string time_zone = "UTC";
  uint32_t limit = 10;
};

// Default look-back per granularity when --from is not given.
absl::Duration DefaultRange(v1::Granularity g) {
  switch (g) {
    case v1::GRANULARITY_TEN_SECONDS:
      return absl::Hours(1);
    case v1::GRANULARITY_HOUR:
      return absl::Hours(24);
    case v1::GRANULARITY_DAY:
      return absl::Hours(24 * 7);
    default:
      return absl::Hours(24 * 366);
  }
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  ts->set_seconds(absl::ToUnixSeconds(t));
}

std::vector<std::string> TotalsColumns(const v1::UsageTotals& t) {
  return {Thousands(t.requests()),
          Thousands(t.input_tokens()),
          Thousands(t.cached_input_tokens()),
          Thousands(t.output_tokens()),
          Thousands(t.reasoning_tokens()),
          Thousands(t.total_tokens()),
          Usd(t.cost_micro_usd())};
}

const std::vector<std::string> kTotalsHeader = {"REQUESTS",  "INPUT",        "CACHED", "OUTPUT",
                                                "REASONING", "TOTAL_TOKENS", "COST"};

int RunUsage(const Ctl& ctl, const UsageArgs& args) {
  const std::optional<v1::Granularity> g = ParseGranularity(args.granularity);
  if (!g) return UsageError(ctl, "--granularity must be 10s, hour, day or month");
  absl::Time to = absl::Now();
  if (!args.to.empty()) {
    absl::StatusOr<absl::Time> t = ParseTime(args.to);
    if (!t.ok()) return UsageError(ctl, absl::StrCat("--to: ", t.status().message()));
    to = *t;
  }
  absl::Time from = to - DefaultRange(*g);
  if (!args.from.empty()) {
    absl::StatusOr<absl::Time> t = ParseTime(args.from);
    if (!t.ok()) return UsageError(ctl, absl::StrCat("--from: ", t.status().message()));
    from = *t;
  }
  v1::GetUsageRequest request;
  *request.mutable_scope() = args.scope.ToProto();
  request.set_granularity(*g);
  SetTimestamp(from, request.mutable_from());
  SetTimestamp(to, request.mutable_to());
  request.set_time_zone(args.time_zone);
  const int shard = ctl.router->OwnerOf(args.scope.tenant);
  v1::GetUsageResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = v1::UsageService::NewStub(ctl.router->channel(shard))
                            ->GetUsage(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
    return kExitOk;
  }
  *ctl.out << ScopeText(request.scope()) << ", per " << args.granularity << " (" << args.time_zone
           << "), " << TimeText(absl::ToUnixSeconds(from)) << " .. "
           << TimeText(absl::ToUnixSeconds(to)) << "\n";
  if (response.points_size() == 0) {
    *ctl.out << "no usage in this range\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"WINDOW_START"}};
  rows[0].insert(rows[0].end(), kTotalsHeader.begin(), kTotalsHeader.end());
  for (const v1::UsagePoint& p : response.points()) {
    rows.push_back({TimeText(p.window_start().seconds())});
    const std::vector<std::string> cols = TotalsColumns(p.totals());
    rows.back().insert(rows.back().end(), cols.begin(), cols.end());
  }
  PrintTable(*ctl.out, rows, 1);
  return kExitOk;
}

int RunTop(const Ctl& ctl, const TopArgs& args) {
  const std::optional<v1::Granularity> g = ParseGranularity(args.granularity);
  const std::optional<v1::Level> level = ParseLevel(args.level);
  const std::optional<v1::Metric> metric = ParseMetric(args.metric);
  if (!g) return UsageError(ctl, "--granularity must be 10s, hour, day or month");
  if (!level) return UsageError(ctl, "--level must be team, user, api_key or model");
  if (!metric) {
    return UsageError(ctl,
                      "--metric must be input_tokens, output_tokens, total_tokens, "
                      "requests or cost");
  }
  v1::TopSpendersRequest request;
  request.set_tenant(args.tenant);
  request.set_level(*level);
  request.set_metric(*metric);
  request.set_granularity(*g);
  request.set_time_zone(args.time_zone);
  request.set_limit(args.limit);
  if (!args.at.empty()) {
    absl::StatusOr<absl::Time> t = ParseTime(args.at);
    if (!t.ok()) return UsageError(ctl, absl::StrCat("--at: ", t.status().message()));
    SetTimestamp(*t, request.mutable_at());
  }
  const int shard = ctl.router->OwnerOf(args.tenant);
  v1::TopSpendersResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = v1::UsageService::NewStub(ctl.router->channel(shard))
                            ->TopSpenders(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
    return kExitOk;
  }
  *ctl.out << "top " << args.level << "s of tenant " << args.tenant << " by " << args.metric << ", "
           << args.granularity << " starting " << TimeText(response.window_start().seconds())
           << " (" << args.time_zone << "), shard " << shard << "\n";
  if (response.spenders_size() == 0) {
    *ctl.out << "no usage in this window\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"#", "SCOPE"}};
  rows[0].insert(rows[0].end(), kTotalsHeader.begin(), kTotalsHeader.end());
  int rank = 0;
  for (const v1::Spender& s : response.spenders()) {
    rows.push_back({absl::StrCat(++rank), ScopeText(s.scope())});
    const std::vector<std::string> cols = TotalsColumns(s.totals());
    rows.back().insert(rows.back().end(), cols.begin(), cols.end());
  }
  PrintTable(*ctl.out, rows, 2);
  return kExitOk;
}

}  // namespace

void AddUsageCommands(CLI::App& app, const Ctl* ctl, Action* action) {
  auto usage = std::make_shared<UsageArgs>();
  CLI::App* cmd = app.add_subcommand("usage", "usage of one scope as a time series");
  AddScopeOptions(cmd, &usage->scope, /*with_model=*/true, /*request_scope=*/false);
  cmd->add_option("--granularity", usage->granularity, "10s | hour | day | month")
      ->capture_default_str();
  cmd->add_option("--from", usage->from,
                  "RFC 3339 start (default: 1 h / 24 h / 7 d / 366 d before --to)");
  cmd->add_option("--to", usage->to, "RFC 3339 end, exclusive (default: now)");
  cmd->add_option("--time-zone", usage->time_zone, "IANA zone of calendar windows")
      ->capture_default_str();
  cmd->callback([=] { *action = [=] { return RunUsage(*ctl, *usage); }; });

  auto top = std::make_shared<TopArgs>();
  cmd = app.add_subcommand("top", "top spenders of a tenant in one window");
  cmd->add_option("--tenant", top->tenant, "tenant")->required();
  cmd->add_option("--level", top->level, "team | user | api_key | model")->capture_default_str();
  cmd->add_option("--metric", top->metric,
                  "input_tokens | output_tokens | total_tokens | requests | cost")
      ->capture_default_str();
  cmd->add_option("--granularity", top->granularity, "10s | hour | day | month")
      ->capture_default_str();
  cmd->add_option("--at", top->at, "RFC 3339 time inside the window (default: now)");
  cmd->add_option("--time-zone", top->time_zone, "IANA zone of calendar windows")
      ->capture_default_str();
  cmd->add_option("--limit", top->limit, "how many spenders (1..1000)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->callback([=] { *action = [=] { return RunTop(*ctl, *top); }; });
}

}  // namespace tokenmeter::ctl
