// policies list|upsert|delete, prices get|set, dead-letters: the AdminService.
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "services/aggregator/policy.h"
#include "services/aggregator/proto_convert.h"
#include "services/ctl/ctl.h"
#include "tokenmeter/v1/admin.grpc.pb.h"

namespace tokenmeter::ctl {
namespace {

struct PolicyArgs {
  std::string tenant;  // list, delete
  std::string id;      // delete
  std::string file;    // upsert
  std::string json;    // upsert
};

struct PricesArgs {
  int shard = 0;     // get
  std::string file;  // set
  std::string json;  // set
};

struct DeadLetterArgs {
  std::string tenant;
  uint32_t limit = 20;
};

std::unique_ptr<v1::AdminService::Stub> Admin(const Ctl& ctl, int shard) {
  return v1::AdminService::NewStub(ctl.router->channel(shard));
}

// Parses a configuration file in the policy-file format (services/aggregator/policy.cc).
absl::StatusOr<aggregator::ConfigFile> ReadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  return aggregator::ParseConfigYaml(text.str(), path);
}

std::string LimitsText(const v1::Policy& p) {
  std::vector<std::string> parts;
  for (const v1::Limit& l : p.limits()) {
    parts.push_back(absl::StrCat(MetricName(l.metric()), "/", WindowName(l.window()),
                                 "<=", Amount(l.metric(), l.amount())));
  }
  return absl::StrJoin(parts, ", ");
}

void PrintPolicies(const Ctl& ctl, const v1::ListPoliciesResponse& response) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "SELECTOR", "MODE", "FAIL", "SOURCE", "LIMITS"}};
  for (const v1::Policy& p : response.policies()) {
    rows.push_back({p.id(), ScopeText(p.selector()),
                    p.mode() == v1::MODE_SHADOW ? "shadow" : "enforce",
                    p.failure_mode() == v1::FAILURE_MODE_CLOSED ? "closed" : "open", p.source(),
                    LimitsText(p)});
  }
  PrintTable(*ctl.out, rows, SIZE_MAX);
  if (!response.last_reload_error().empty()) {
    *ctl.out << "WARNING: last policy-file reload failed (previous policies in force): "
             << response.last_reload_error() << "\n";
  }
}

int RunPoliciesList(const Ctl& ctl, const PolicyArgs& args) {
  int rc = kExitOk;
  for (int shard = 0; shard < ctl.router->shard_count(); ++shard) {
    if (!args.tenant.empty() && shard != ctl.router->OwnerOf(args.tenant)) continue;
    v1::ListPoliciesRequest request;
    request.set_tenant(args.tenant);
    v1::ListPoliciesResponse response;
    auto context = NewContext(ctl);
    grpc::Status status = Admin(ctl, shard)->ListPolicies(context.get(), request, &response);
    if (!status.ok()) {
      rc = RpcError(ctl, shard, status);
      continue;
    }
    if (ctl.json) {
      PrintJson(ctl, response);
      continue;
    }
    *ctl.out << "shard " << shard << " (" << ctl.router->address(shard) << ")"
             << (args.tenant.empty() ? "" : absl::StrCat(", policies of tenant ", args.tenant))
             << ":\n";
    PrintPolicies(ctl, response);
  }
  return rc;
}

int UpsertOne(const Ctl& ctl, const v1::Policy& policy) {
  const std::string& tenant = policy.selector().tenant();
  if (tenant.empty() || tenant == "*") {
    return UsageError(ctl, absl::StrCat("policy ", policy.id(),
                                        ": an override names one tenant (selector.tenant)"));
  }
  const int shard = ctl.router->OwnerOf(tenant);
  v1::UpsertPolicyRequest request;
  *request.mutable_policy() = policy;
  request.mutable_policy()->clear_source();
  v1::UpsertPolicyResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = Admin(ctl, shard)->UpsertPolicy(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (!ctl.json) *ctl.out << "upserted " << policy.id() << " for tenant " << tenant << "\n";
  return kExitOk;
}

int RunPoliciesUpsert(const Ctl& ctl, const PolicyArgs& args) {
  std::vector<v1::Policy> policies;
  if (!args.json.empty()) {
    v1::Policy& policy = policies.emplace_back();
    if (!google::protobuf::util::JsonStringToMessage(args.json, &policy).ok()) {
      return UsageError(ctl, "--json is not a tokenmeter.v1.Policy in JSON");
    }
  } else {
    absl::StatusOr<aggregator::ConfigFile> config = ReadConfig(args.file);
    if (!config.ok()) return UsageError(ctl, std::string(config.status().message()));
    for (const aggregator::Policy& p : config->policies) {
      aggregator::ToProto(p, &policies.emplace_back());
    }
  }
  int rc = kExitOk;
  for (const v1::Policy& p : policies) {
    if (int r = UpsertOne(ctl, p); r != kExitOk) rc = r;
  }
  return rc;
}

int RunPoliciesDelete(const Ctl& ctl, const PolicyArgs& args) {
  const int shard = ctl.router->OwnerOf(args.tenant);
  v1::DeletePolicyRequest request;
  request.set_tenant(args.tenant);
  request.set_id(args.id);
  v1::DeletePolicyResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = Admin(ctl, shard)->DeletePolicy(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
  } else {
    *ctl.out << (response.existed() ? "deleted override " : "no override named ") << args.id
             << " for tenant " << args.tenant << "\n";
  }
  return kExitOk;
}

int RunPricesGet(const Ctl& ctl, const PricesArgs& args) {
  if (args.shard < 0 || args.shard >= ctl.router->shard_count()) {
    return UsageError(ctl, absl::StrCat("--shard must be in 0..", ctl.router->shard_count() - 1));
  }
  v1::GetPricesResponse response;
  auto context = NewContext(ctl);
  grpc::Status status =
      Admin(ctl, args.shard)->GetPrices(context.get(), v1::GetPricesRequest(), &response);
  if (!status.ok()) return RpcError(ctl, args.shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
    return kExitOk;
  }
  *ctl.out << "price table version " << response.version() << " (shard " << args.shard
           << "), USD per 1M tokens\n";
  std::vector<std::vector<std::string>> rows = {
      {"PROVIDER", "MODEL", "INPUT", "CACHED_INPUT", "OUTPUT"}};
  for (const v1::Price& p : response.prices()) {
    rows.push_back({p.provider(), p.model(), Usd(p.input_per_mtok_micro_usd()),
                    Usd(p.cached_input_per_mtok_micro_usd()), Usd(p.output_per_mtok_micro_usd())});
  }
  PrintTable(*ctl.out, rows, 2);
  return kExitOk;
}

int RunPricesSet(const Ctl& ctl, const PricesArgs& args) {
  v1::SetPricesRequest request;
  if (!args.json.empty()) {
    if (!google::protobuf::util::JsonStringToMessage(args.json, &request).ok()) {
      return UsageError(ctl, "--json is not a tokenmeter.v1.SetPricesRequest in JSON");
    }
  } else {
    absl::StatusOr<aggregator::ConfigFile> config = ReadConfig(args.file);
    if (!config.ok()) return UsageError(ctl, std::string(config.status().message()));
    if (!config->prices) return UsageError(ctl, args.file + ": no prices: section");
    request.set_version(config->prices->version());
    for (const aggregator::ModelPrice& p : config->prices->prices()) {
      aggregator::ToProto(p, request.add_prices());
    }
  }
  // Every shard prices its own tenants' usage, so the table goes to all of them.
  int rc = kExitOk;
  for (int shard = 0; shard < ctl.router->shard_count(); ++shard) {
    v1::SetPricesResponse response;
    auto context = NewContext(ctl);
    grpc::Status status = Admin(ctl, shard)->SetPrices(context.get(), request, &response);
    if (!status.ok()) {
      rc = RpcError(ctl, shard, status);
      continue;
    }
    *ctl.out << "shard " << shard << ": price table version " << request.version() << " ("
             << request.prices_size() << " models) set\n";
  }
  return rc;
}

int RunDeadLetters(const Ctl& ctl, const DeadLetterArgs& args) {
  int rc = kExitOk;
  std::vector<std::vector<std::string>> rows = {
      {"SHARD", "RECEIVED", "TENANT", "EVENT_ID", "REASON", "PRODUCER", "DETAIL"}};
  for (int shard = 0; shard < ctl.router->shard_count(); ++shard) {
    if (!args.tenant.empty() && shard != ctl.router->OwnerOf(args.tenant)) continue;
    v1::ListDeadLettersRequest request;
    request.set_tenant(args.tenant);
    request.set_limit(args.limit);
    v1::ListDeadLettersResponse response;
    auto context = NewContext(ctl);
    grpc::Status status = Admin(ctl, shard)->ListDeadLetters(context.get(), request, &response);
    if (!status.ok()) {
      rc = RpcError(ctl, shard, status);
      continue;
    }
    if (ctl.json) {
      PrintJson(ctl, response);
      continue;
    }
    for (const v1::DeadLetter& d : response.dead_letters()) {
      rows.push_back({absl::StrCat(shard), TimeText(d.received_at_unix_ms() / 1000),
                      d.event().tenant(), d.event().event_id(), d.reason(), d.producer_id(),
                      d.detail()});
    }
  }
  if (!ctl.json) {
    if (rows.size() == 1) {
      *ctl.out << "no dead letters\n";
    } else {
      PrintTable(*ctl.out, rows, SIZE_MAX);
    }
  }
  return rc;
}

}  // namespace

void AddAdminCommands(CLI::App& app, const Ctl* ctl, Action* action) {
  CLI::App* policies = app.add_subcommand("policies", "policy overrides (Admin RPC)");
  policies->require_subcommand(1);
  auto list = std::make_shared<PolicyArgs>();
  CLI::App* cmd = policies->add_subcommand("list", "policies in force (file and overrides)");
  cmd->add_option("--tenant", list->tenant, "only this tenant's (default: every shard's all)");
  cmd->callback([=] { *action = [=] { return RunPoliciesList(*ctl, *list); }; });

  auto upsert = std::make_shared<PolicyArgs>();
  cmd = policies->add_subcommand("upsert",
                                 "create or replace overrides on each policy's tenant's shard");
  auto* file = cmd->add_option("--file", upsert->file,
                               "YAML in the policy-file format; every policy in it is upserted");
  auto* json = cmd->add_option("--json", upsert->json, "one tokenmeter.v1.Policy as JSON");
  file->excludes(json);
  cmd->require_option(1);
  cmd->callback([=] { *action = [=] { return RunPoliciesUpsert(*ctl, *upsert); }; });

  auto del = std::make_shared<PolicyArgs>();
  cmd = policies->add_subcommand("delete", "delete an override");
  cmd->add_option("--tenant", del->tenant, "tenant")->required();
  cmd->add_option("--id", del->id, "policy id")->required();
  cmd->callback([=] { *action = [=] { return RunPoliciesDelete(*ctl, *del); }; });

  CLI::App* prices = app.add_subcommand("prices", "the model price table");
  prices->require_subcommand(1);
  auto get = std::make_shared<PricesArgs>();
  cmd = prices->add_subcommand("get", "print one shard's price table");
  cmd->add_option("--shard", get->shard, "shard index")->capture_default_str();
  cmd->callback([=] { *action = [=] { return RunPricesGet(*ctl, *get); }; });

  auto set = std::make_shared<PricesArgs>();
  cmd = prices->add_subcommand("set", "replace the price table on every shard");
  file = cmd->add_option("--file", set->file,
                         "YAML in the policy-file format (its prices: section is used)");
  json = cmd->add_option("--json", set->json, "a tokenmeter.v1.SetPricesRequest as JSON");
  file->excludes(json);
  cmd->require_option(1);
  cmd->callback([=] { *action = [=] { return RunPricesSet(*ctl, *set); }; });

  auto dead = std::make_shared<DeadLetterArgs>();
  cmd = app.add_subcommand("dead-letters", "events refused at ingest, newest first");
  cmd->add_option("--tenant", dead->tenant, "only this tenant (default: every shard)");
  cmd->add_option("--limit", dead->limit, "most entries per shard (1..1000)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->callback([=] { *action = [=] { return RunDeadLetters(*ctl, *dead); }; });
}

}  // namespace tokenmeter::ctl
