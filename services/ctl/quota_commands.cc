// check / reserve / commit / release: the QuotaService around one LLM call, by hand.
#include <unistd.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "services/ctl/ctl.h"
#include "tokenmeter/v1/quota.grpc.pb.h"

namespace tokenmeter::ctl {
namespace {

struct CheckArgs {
  ScopeArgs scope;
  TokenArgs tokens;
};

struct ReserveArgs {
  std::string id;
  ScopeArgs scope;
  TokenArgs tokens;
  uint32_t ttl_ms = 0;
};

struct CloseArgs {
  std::string tenant;
  std::string id;
  TokenArgs tokens;  // commit only
};

int RunCheck(const Ctl& ctl, const CheckArgs& args) {
  const int shard = ctl.router->OwnerOf(args.scope.tenant);
  v1::CheckRequest request;
  *request.mutable_scope() = args.scope.ToProto();
  *request.mutable_usage() = args.tokens.ToProto();
  v1::QuotaDecision decision;
  auto context = NewContext(ctl);
  grpc::Status status = v1::QuotaService::NewStub(ctl.router->channel(shard))
                            ->Check(context.get(), request, &decision);
  if (!status.ok()) return RpcError(ctl, shard, status);
  return PrintDecision(ctl, decision);
}

int RunReserve(const Ctl& ctl, const ReserveArgs& args) {
  const int shard = ctl.router->OwnerOf(args.scope.tenant);
  v1::ReserveRequest request;
  request.set_reservation_id(
      args.id.empty() ? absl::StrCat("ctl-", absl::ToUnixMillis(absl::Now()), "-", getpid())
                      : args.id);
  *request.mutable_scope() = args.scope.ToProto();
  *request.mutable_estimate() = args.tokens.ToProto();
  request.set_ttl_ms(args.ttl_ms);
  v1::QuotaDecision decision;
  auto context = NewContext(ctl);
  grpc::Status status = v1::QuotaService::NewStub(ctl.router->channel(shard))
                            ->Reserve(context.get(), request, &decision);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (!ctl.json) {
    *ctl.out << "reservation " << request.reservation_id();
    if (decision.result() == v1::QuotaDecision::ALLOWED) {
      *ctl.out << " held until " << TimeText(decision.expires_at_unix_ms() / 1000);
    }
    *ctl.out << "\n";
  }
  return PrintDecision(ctl, decision);
}

int RunCommit(const Ctl& ctl, const CloseArgs& args) {
  const int shard = ctl.router->OwnerOf(args.tenant);
  v1::CommitRequest request;
  request.set_reservation_id(args.id);
  request.set_tenant(args.tenant);
  *request.mutable_actual() = args.tokens.ToProto();
  v1::CommitResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = v1::QuotaService::NewStub(ctl.router->channel(shard))
                            ->Commit(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
  } else {
    *ctl.out << "committed " << args.id
             << (response.duplicate() ? " (repeat of an earlier commit: nothing recorded again)"
                 : response.reservation_was_open()
                     ? ""
                     : " (reservation had expired or was released; usage recorded anyway)")
             << "\n";
  }
  return kExitOk;
}

int RunRelease(const Ctl& ctl, const CloseArgs& args) {
  const int shard = ctl.router->OwnerOf(args.tenant);
  v1::ReleaseRequest request;
  request.set_reservation_id(args.id);
  request.set_tenant(args.tenant);
  v1::ReleaseResponse response;
  auto context = NewContext(ctl);
  grpc::Status status = v1::QuotaService::NewStub(ctl.router->channel(shard))
                            ->Release(context.get(), request, &response);
  if (!status.ok()) return RpcError(ctl, shard, status);
  if (ctl.json) {
    PrintJson(ctl, response);
  } else {
    *ctl.out << "released " << args.id
             << (response.reservation_was_open() ? "" : " (was not open: nothing to return)")
             << "\n";
  }
  return kExitOk;
}

}  // namespace

void AddQuotaCommands(CLI::App& app, const Ctl* ctl, Action* action) {
  auto check = std::make_shared<CheckArgs>();
  CLI::App* cmd = app.add_subcommand(
      "check", "would this usage fit every limit now? (changes nothing; exit 3 if denied)");
  AddScopeOptions(cmd, &check->scope, /*with_model=*/true, /*request_scope=*/true);
  AddTokenOptions(cmd, &check->tokens);
  cmd->callback([=] { *action = [=] { return RunCheck(*ctl, *check); }; });

  auto reserve = std::make_shared<ReserveArgs>();
  cmd = app.add_subcommand("reserve", "hold an estimate against every limit (exit 3 if denied)");
  cmd->add_option("--id", reserve->id, "reservation id (default: generated)");
  AddScopeOptions(cmd, &reserve->scope, /*with_model=*/true, /*request_scope=*/true);
  AddTokenOptions(cmd, &reserve->tokens);
  cmd->add_option("--ttl-ms", reserve->ttl_ms, "time to live; 0 = server default")
      ->capture_default_str();
  cmd->callback([=] { *action = [=] { return RunReserve(*ctl, *reserve); }; });

  auto commit = std::make_shared<CloseArgs>();
  cmd = app.add_subcommand("commit", "record the actual usage of a reservation");
  cmd->add_option("--tenant", commit->tenant, "tenant of the reservation")->required();
  cmd->add_option("--id", commit->id, "reservation id")->required();
  AddTokenOptions(cmd, &commit->tokens);
  cmd->callback([=] { *action = [=] { return RunCommit(*ctl, *commit); }; });

  auto release = std::make_shared<CloseArgs>();
  cmd = app.add_subcommand("release", "return a reservation's estimate without usage");
  cmd->add_option("--tenant", release->tenant, "tenant of the reservation")->required();
  cmd->add_option("--id", release->id, "reservation id")->required();
  cmd->callback([=] { *action = [=] { return RunRelease(*ctl, *release); }; });
}

}  // namespace tokenmeter::ctl
