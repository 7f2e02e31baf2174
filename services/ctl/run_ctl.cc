// The top-level command line of tokenmeterctl: global flags, the command groups, the router.
#include "absl/strings/str_cat.h"
#include "services/common/shard_router.h"
#include "services/ctl/ctl.h"

namespace tokenmeter::ctl {

int RunCtl(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{"tokenmeterctl: operator CLI of the tokenmeter usage-metering and quota plane"};
  app.footer(
      "Every call is routed to the owner shard of its tenant and has a deadline (--timeout).\n"
      "Exit codes: 0 ok, 1 an RPC failed (the gRPC status code name is printed), 2 bad "
      "arguments,\n3 check/reserve was DENIED.");
  std::string aggregators = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";
  double timeout_seconds = 5;
  std::string output = "text";
  app.add_option("--aggregators", aggregators,
                 "shard addresses host:port,host:port,... (index = shard index)")
      ->envname("TOKENMETER_AGGREGATORS")
      ->capture_default_str();
  app.add_option("--timeout", timeout_seconds, "deadline of each call, in seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 3600.0));
  app.add_option("-o,--output", output, "text | json")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  app.require_subcommand(1);

  Ctl ctl;
  ctl.out = &out;
  ctl.err = &err;
  Action action;
  AddQuotaCommands(app, &ctl, &action);
  AddUsageCommands(app, &ctl, &action);
  AddAdminCommands(app, &ctl, &action);
  AddClusterCommands(app, &ctl, &action);
  // CLI11 reports parse errors (and --help) by exception; this is the CLI11_PARSE idiom with
  // our streams. Nothing else in the CLI throws.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e, out, err);
    return code == 0 ? kExitOk : kExitUsage;
  }

  auto router = common::ShardRouter::Create(aggregators);
  if (!router.ok()) {
    return UsageError(ctl, absl::StrCat("--aggregators: ", router.status().message()));
  }
  ctl.router = router->get();
  ctl.timeout = absl::Seconds(timeout_seconds);
  ctl.json = output == "json";
  if (!action) return UsageError(ctl, "no command given (see --help)");
  return action();
}

}  // namespace tokenmeter::ctl
