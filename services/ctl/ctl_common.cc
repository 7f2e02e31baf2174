#include <algorithm>
#include <iostream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "services/common/grpc_status.h"
#include "services/ctl/ctl.h"

namespace tokenmeter::ctl {
namespace {

struct MetricEntry {
  v1::Metric metric;
  const char* name;
};
constexpr MetricEntry kMetrics[] = {
    {v1::METRIC_INPUT_TOKENS, "input_tokens"}, {v1::METRIC_OUTPUT_TOKENS, "output_tokens"},
    {v1::METRIC_TOTAL_TOKENS, "total_tokens"}, {v1::METRIC_REQUESTS, "requests"},
    {v1::METRIC_COST_MICRO_USD, "cost_usd"},
};

}  // namespace

std::unique_ptr<grpc::ClientContext> NewContext(const Ctl& ctl) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + ctl.timeout));
  return context;
}

int RpcError(const Ctl& ctl, int shard, const grpc::Status& status) {
  const absl::Status s = common::FromGrpcStatus(status);
  *ctl.err << "error: shard " << shard << " (" << ctl.router->address(shard)
           << "): " << absl::StatusCodeToString(s.code()) << ": " << status.error_message() << "\n";
  return kExitRpcError;
}

int UsageError(const Ctl& ctl, const std::string& message) {
  *ctl.err << "error: " << message << "\n";
  return kExitUsage;
}

void PrintJson(const Ctl& ctl, const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    json = "{}";  // Only fails for malformed Any fields, which our messages do not have.
  }
  *ctl.out << json << "\n";
}

v1::Scope ScopeArgs::ToProto() const {
  v1::Scope scope;
  scope.set_tenant(tenant);
  scope.set_team(team);
  scope.set_user(user);
  scope.set_api_key(api_key);
  scope.set_provider(provider);
  scope.set_model(model);
  return scope;
}

void AddScopeOptions(CLI::App* cmd, ScopeArgs* scope, bool with_model, bool request_scope) {
  cmd->add_option("--tenant", scope->tenant, "tenant (routing key)")->required();
  // A quota call names the caller in full; a usage query may stop at any level.
  cmd->add_option("--team", scope->team, "team inside the tenant")->required(request_scope);
  cmd->add_option("--user", scope->user, "user or service account (needs --team)")
      ->required(request_scope);
  cmd->add_option("--api-key", scope->api_key, "API key id (needs --user)");
  if (!with_model) return;
  cmd->add_option("--provider", scope->provider, "model provider, e.g. openai");
  cmd->add_option("--model", scope->model, "model, e.g. gpt-4o");
}

v1::TokenCounts TokenArgs::ToProto() const {
  v1::TokenCounts tokens;
  tokens.set_input(input);
  tokens.set_cached_input(cached_input);
  tokens.set_output(output);
  tokens.set_reasoning(reasoning);
  return tokens;
}

void AddTokenOptions(CLI::App* cmd, TokenArgs* tokens) {
  cmd->add_option("--input", tokens->input, "input (prompt) tokens")->capture_default_str();
  cmd->add_option("--cached-input", tokens->cached_input, "part of --input read from cache")
      ->capture_default_str();
  cmd->add_option("--output", tokens->output, "output tokens")->capture_default_str();
  cmd->add_option("--reasoning", tokens->reasoning, "part of --output spent on reasoning")
      ->capture_default_str();
}

std::string MetricName(v1::Metric metric) {
  for (const MetricEntry& e : kMetrics) {
    if (e.metric == metric) return e.name;
  }
  return "unspecified";
}

std::string WindowName(v1::Window window) {
  switch (window) {
    case v1::WINDOW_MINUTE:
      return "minute";
    case v1::WINDOW_HOUR:
      return "hour";
    case v1::WINDOW_DAY:
      return "day";
    case v1::WINDOW_MONTH:
      return "month";
    default:
      return "unspecified";
  }
}

std::optional<v1::Metric> ParseMetric(const std::string& name) {
  if (name == "cost" || name == "cost_micro_usd") return v1::METRIC_COST_MICRO_USD;
  for (const MetricEntry& e : kMetrics) {
    if (name == e.name) return e.metric;
  }
  return std::nullopt;
}

std::optional<v1::Granularity> ParseGranularity(const std::string& name) {
  if (name == "10s" || name == "ten_seconds") return v1::GRANULARITY_TEN_SECONDS;
  if (name == "hour") return v1::GRANULARITY_HOUR;
  if (name == "day") return v1::GRANULARITY_DAY;
  if (name == "month") return v1::GRANULARITY_MONTH;
  return std::nullopt;
}

std::optional<v1::Level> ParseLevel(const std::string& name) {
  if (name == "team") return v1::LEVEL_TEAM;
  if (name == "user") return v1::LEVEL_USER;
  if (name == "api_key" || name == "api-key") return v1::LEVEL_API_KEY;
  if (name == "model") return v1::LEVEL_MODEL;
  return std::nullopt;
}

std::string Thousands(uint64_t value) {
  std::string digits = absl::StrCat(value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Usd(uint64_t micro_usd) {
  return absl::StrFormat("$%s.%06d", Thousands(micro_usd / 1000000),
                         static_cast<int>(micro_usd % 1000000));
}

std::string Amount(v1::Metric metric, uint64_t value) {
  return metric == v1::METRIC_COST_MICRO_USD ? Usd(value) : Thousands(value);
}

std::string ScopeText(const v1::Scope& scope) {
  std::vector<std::string> parts;
  if (!scope.tenant().empty()) parts.push_back(absl::StrCat("tenant=", scope.tenant()));
  if (!scope.team().empty()) parts.push_back(absl::StrCat("team=", scope.team()));
  if (!scope.user().empty()) parts.push_back(absl::StrCat("user=", scope.user()));
  if (!scope.api_key().empty()) parts.push_back(absl::StrCat("api_key=", scope.api_key()));
  if (!scope.model().empty()) {
    parts.push_back(scope.provider().empty()
                        ? absl::StrCat("model=", scope.model())
                        : absl::StrCat("model=", scope.provider(), "/", scope.model()));
  }
  return parts.empty() ? "(whole tenant)" : absl::StrJoin(parts, "/");
}

std::string TimeText(int64_t seconds) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(seconds),
                          absl::UTCTimeZone());
}

absl::StatusOr<absl::Time> ParseTime(const std::string& text) {
  absl::Time t;
  std::string error;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not an RFC 3339 time (", error, ")"));
  }
  return t;
}

void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows,
                size_t first_numeric, size_t end_numeric) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string pad(widths[i] - row[i].size(), ' ');
      if (i > 0) line += "  ";
      const bool numeric = i >= first_numeric && i < end_numeric;
      line += numeric ? pad + row[i] : (i + 1 < row.size() ? row[i] + pad : row[i]);
    }
    out << line << "\n";
  }
}

int PrintDecision(const Ctl& ctl, const v1::QuotaDecision& decision) {
  const bool denied = decision.result() == v1::QuotaDecision::DENIED;
  if (ctl.json) {
    PrintJson(ctl, decision);
    return denied ? kExitDenied : kExitOk;
  }
  *ctl.out << (denied ? "DENIED" : "ALLOWED");
  if (denied && decision.retry_after_ms() > 0) {
    *ctl.out << absl::StrFormat(" (retry after %.1f s)", decision.retry_after_ms() / 1000.0);
  }
  if (decision.shadow_denied()) *ctl.out << " (a shadow-mode limit would deny)";
  *ctl.out << "\n";
  if (decision.limits_size() == 0) {
    *ctl.out << "no policy limits this scope\n";
    return denied ? kExitDenied : kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"POLICY", "SCOPE", "LIMIT", "MODE", "USED", "OUTSTANDING", "REQUESTED", "OF", "STATE"}};
  for (const v1::LimitStatus& l : decision.limits()) {
    std::string state = l.exceeded() ? "EXCEEDED" : "ok";
    if (l.warn_percent() > 0) absl::StrAppend(&state, " warn>=", l.warn_percent(), "%");
    rows.push_back({l.policy_id(), l.scope(),
                    absl::StrCat(MetricName(l.metric()), "/", WindowName(l.window())),
                    l.mode() == v1::MODE_SHADOW ? "shadow" : "enforce",
                    Amount(l.metric(), l.used()), Amount(l.metric(), l.outstanding()),
                    Amount(l.metric(), l.requested()), Amount(l.metric(), l.limit()), state});
  }
  PrintTable(*ctl.out, rows, 4, 8);
  return denied ? kExitDenied : kExitOk;
}

}  // namespace tokenmeter::ctl
