// tokenmeterctl: the operator CLI. Each command routes by tenant to the owner shard
// (common::OwnerShard through a ShardRouter), sets a deadline on every call, prints a table
// (or the response as JSON with --output json) on `out`, and reports failures on `err` as
// "error: shard <i> (<address>): <CODE_NAME>: <message>".
//
// Exit codes (kExit*): 0 success; 1 an RPC failed; 2 bad arguments; 3 a quota decision was
// DENIED (check / reserve), so scripts can branch on it.
//
// Thread-safety: commands run on the calling thread; nothing is shared.
#ifndef TOKENMETER_SERVICES_CTL_CTL_H_
#define TOKENMETER_SERVICES_CTL_CTL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "services/common/shard_router.h"
#include "tokenmeter/v1/event.pb.h"
#include "tokenmeter/v1/quota.pb.h"
#include "tokenmeter/v1/usage.pb.h"

namespace tokenmeter::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRpcError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitDenied = 3;

// Parses the command line (argv[0] is the program name) and runs the chosen command, printing
// on `out` / `err`. Returns the exit code. Used by main() and by tests.
int RunCtl(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

// What every command needs. `router` is set after flag parsing, before any command runs.
struct Ctl {
  const common::ShardRouter* router = nullptr;
  absl::Duration timeout = absl::Seconds(5);
  bool json = false;
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
};

// The command chosen on the command line, set by the subcommand's parse callback.
using Action = std::function<int()>;

// Registration of each command group on the top-level app. The commands read `ctl` only when
// they run, so it may be completed after parsing.
void AddQuotaCommands(CLI::App& app, const Ctl* ctl, Action* action);
void AddUsageCommands(CLI::App& app, const Ctl* ctl, Action* action);
void AddAdminCommands(CLI::App& app, const Ctl* ctl, Action* action);
void AddClusterCommands(CLI::App& app, const Ctl* ctl, Action* action);

// ---- Helpers shared by the command files (ctl_common.cc). ----

// A ClientContext whose deadline is now + ctl.timeout.
std::unique_ptr<grpc::ClientContext> NewContext(const Ctl& ctl);

// Prints "error: shard <i> (<address>): <CODE_NAME>: <message>" and returns kExitRpcError.
int RpcError(const Ctl& ctl, int shard, const grpc::Status& status);
// Prints "error: <message>" and returns kExitUsage.
int UsageError(const Ctl& ctl, const std::string& message);

// Prints `message` as one JSON object line (proto3 JSON mapping, enums by name).
void PrintJson(const Ctl& ctl, const google::protobuf::Message& message);

// Scope flags (--tenant required, --team, --user, --api-key, --provider, --model).
struct ScopeArgs {
  std::string tenant, team, user, api_key, provider, model;
  v1::Scope ToProto() const;
};
// request_scope: the command sends a quota call, which needs --team and --user.
void AddScopeOptions(CLI::App* cmd, ScopeArgs* scope, bool with_model, bool request_scope);

// Token flags (--input, --cached-input, --output, --reasoning).
struct TokenArgs {
  uint64_t input = 0, cached_input = 0, output = 0, reasoning = 0;
  v1::TokenCounts ToProto() const;
};
void AddTokenOptions(CLI::App* cmd, TokenArgs* tokens);

// Names used on the command line and in tables (the policy file's spelling; cost is
// "cost_usd", shown in USD).
std::string MetricName(v1::Metric metric);
std::string WindowName(v1::Window window);
std::optional<v1::Metric> ParseMetric(const std::string& name);
std::optional<v1::Granularity> ParseGranularity(const std::string& name);
std::optional<v1::Level> ParseLevel(const std::string& name);

// "1,234,567".
std::string Thousands(uint64_t value);
// "$12.345678" from micro-USD.
std::string Usd(uint64_t micro_usd);
// An amount of `metric`: Usd() for cost, Thousands() otherwise.
std::string Amount(v1::Metric metric, uint64_t value);
// "scope=..." rendering of a Scope: "team=research/user=bob", "model=openai/gpt-4o".
std::string ScopeText(const v1::Scope& scope);
// RFC 3339 in UTC.
std::string TimeText(int64_t seconds);
// Parses RFC 3339 ("2026-01-02T03:04:05Z").
absl::StatusOr<absl::Time> ParseTime(const std::string& text);

// Prints rows as aligned columns; rows[0] is the header. Columns in [first_numeric,
// end_numeric) are right-aligned, the others left-aligned.
void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows,
                size_t first_numeric, size_t end_numeric = SIZE_MAX);

// Prints a quota decision as a table (or JSON) and returns kExitOk / kExitDenied.
int PrintDecision(const Ctl& ctl, const v1::QuotaDecision& decision);

}  // namespace tokenmeter::ctl

#endif  // TOKENMETER_SERVICES_CTL_CTL_H_
