// owner / health: where a tenant lives, and whether every shard answers.
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "services/ctl/ctl.h"

namespace tokenmeter::ctl {
namespace {

struct OwnerArgs {
  std::string tenant;
};

struct HealthArgs {
  double wait_seconds = 0;
};

int RunOwner(const Ctl& ctl, const OwnerArgs& args) {
  const int shard = ctl.router->OwnerOf(args.tenant);
  if (ctl.json) {
    *ctl.out << "{\"tenant\":\"" << args.tenant << "\",\"shard\":" << shard << ",\"address\":\""
             << ctl.router->address(shard) << "\"}\n";
  } else {
    *ctl.out << shard << "\n";
  }
  return kExitOk;
}

// grpc.health.v1.HealthCheckResponse.ServingStatus names.
const char* ServingStatusName(int status) {
  switch (status) {
    case 1:
      return "SERVING";
    case 2:
      return "NOT_SERVING";
    case 3:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

// Calls grpc.health.v1.Health/Check for the whole server (service ""), through the generic
// stub so no generated health stubs are needed. The request is an empty message; the response
// is `status` (field 1, varint), i.e. the bytes 08 <status>. Sets *serving_status.
grpc::Status CheckHealth(const Ctl& ctl, int shard, absl::Duration timeout, int* serving_status) {
  grpc::GenericStub stub(ctl.router->channel(shard));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  context.set_wait_for_ready(true);  // A shard still starting is retried until the deadline.
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::Status result;
  absl::Notification done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   result = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();  // The deadline bounds the call.
  if (!result.ok()) return result;
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) bytes.append(s.begin(), s.end());
  }
  *serving_status = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  return grpc::Status::OK;
}

int RunHealth(const Ctl& ctl, const HealthArgs& args) {
  const absl::Time give_up = absl::Now() + absl::Seconds(args.wait_seconds);
  const int n = ctl.router->shard_count();
  std::vector<int> serving(n, 0);
  std::vector<grpc::Status> last(n);
  // Bounded: each round takes at most ctl.timeout, and rounds stop at give_up.
  for (;;) {
    bool all = true;
    for (int shard = 0; shard < n; ++shard) {
      if (serving[shard] == 1) continue;
      const absl::Duration left = std::max(give_up - absl::Now(), absl::Milliseconds(200));
      last[shard] = CheckHealth(ctl, shard, std::min(ctl.timeout, left), &serving[shard]);
      all = all && serving[shard] == 1;
    }
    if (all || absl::Now() >= give_up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  int rc = kExitOk;
  for (int shard = 0; shard < n; ++shard) {
    if (!last[shard].ok()) {
      rc = RpcError(ctl, shard, last[shard]);
      continue;
    }
    *ctl.out << "shard " << shard << " (" << ctl.router->address(shard)
             << "): " << ServingStatusName(serving[shard]) << "\n";
    if (serving[shard] != 1) rc = kExitRpcError;
  }
  return rc;
}

}  // namespace

void AddClusterCommands(CLI::App& app, const Ctl* ctl, Action* action) {
  auto owner = std::make_shared<OwnerArgs>();
  CLI::App* cmd = app.add_subcommand(
      "owner", "print the index of the shard owning a tenant (among --aggregators)");
  cmd->add_option("tenant", owner->tenant, "tenant id")->required();
  cmd->callback([=] { *action = [=] { return RunOwner(*ctl, *owner); }; });

  auto health = std::make_shared<HealthArgs>();
  cmd = app.add_subcommand("health", "grpc.health.v1 check of every shard (exit 1 if any down)");
  cmd->add_option("--wait", health->wait_seconds,
                  "keep retrying for up to this many seconds until every shard serves")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  cmd->callback([=] { *action = [=] { return RunHealth(*ctl, *health); }; });
}

}  // namespace tokenmeter::ctl
