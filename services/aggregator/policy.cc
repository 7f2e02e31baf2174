// Policies: YAML parsing, validation, matching, and the polling file watcher.
//
// Configuration file format (one YAML document; comments are free):
//
//   policies:                       # required; `[]` for none
//     - id: acme-monthly            # required; 1..64 bytes of [A-Za-z0-9._-]; unique in the file
//       selector:                   # required
//         tenant: acme              # required: a tenant id, or "*" = each tenant separately
//         team: "*"                 # absent or "" = the whole level above, "*" = each value
//         user: ""                  #   separately, anything else = exactly that value.
//         api_key: ""               #   user needs team, api_key needs user.
//         model: ""                 # independent of the hierarchy; same three forms.
//       limits:                     # required; 1..16, no two on the same metric and window
//         - {metric: total_tokens, window: day, amount: 1000000}
//         - {metric: cost_usd, window: month, amount: "250.00"}
//       mode: enforce               # enforce | shadow.                   Default: enforce
//       failure_mode: open          # open | closed.                      Default: open
//       warn_percents: [80, 100]    # ascending, unique, each 1..100.     Default: none
//       time_zone: Europe/Berlin    # IANA name for calendar windows.     Default: UTC
//       on_expiry: release          # release | commit_estimate.          Default: release
//   prices:                         # optional; present = a new price table
//     version: 3                    # required; > 0
//     models:                       # required; `[]` for none
//       - {provider: openai, model: gpt-4o, input: "2.50", cached_input: "1.25", output: "10.00"}
//
// metric is input_tokens | output_tokens | total_tokens | requests | cost_micro_usd, or cost_usd:
// an amount in USD with at most 6 decimals, stored as cost_micro_usd. window is minute | hour |
// day | month. Other amounts are integers in plain decimal digits (no sign, exponent or
// separators). Prices are USD per 1,000,000 tokens with at most 6 decimals; cached_input defaults
// to input. Decimal amounts are converted from the scalar's text, never through floating point.
// A bare * starts a YAML alias, so "*" must be quoted. Unknown and repeated keys are errors, so a
// typo cannot silently disable a budget.
#include "services/aggregator/policy.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "services/common/validation.h"
#include "yaml-cpp/yaml.h"

namespace tokenmeter::aggregator {
namespace {

using common::IdKind;

constexpr size_t kMaxLimits = 16;

// ---------------------------------------------------------------------------------------------
// Validation (shared by the YAML parser and the Admin RPC). Every error is
// InvalidArgument("<field path>: <what>"); the parser relies on that shape to find the line.

absl::Status ValidateSelector(const Selector& s) {
  if (s.tenant.empty()) {
    return absl::InvalidArgumentError(
        "selector.tenant: must not be empty (use \"*\" for each tenant)");
  }
  const struct {
    IdKind kind;
    const char* field;
    const std::string& value;
  } fields[] = {{IdKind::kTenant, "selector.tenant", s.tenant},
                {IdKind::kTeam, "selector.team", s.team},
                {IdKind::kUser, "selector.user", s.user},
                {IdKind::kApiKey, "selector.api_key", s.api_key},
                {IdKind::kModel, "selector.model", s.model}};
  for (const auto& [kind, field, value] : fields) {
    if (value == "*") continue;
    absl::Status status = common::ValidateOptionalId(kind, field, value);
    if (!status.ok()) return status;
  }
  if (!s.user.empty() && s.team.empty()) {
    return absl::InvalidArgumentError(
        "selector.user: needs selector.team (levels are tenant > team > user > api_key; "
        "use team \"*\" for any team)");
  }
  if (!s.api_key.empty() && s.user.empty()) {
    return absl::InvalidArgumentError(
        "selector.api_key: needs selector.user (levels are tenant > team > user > api_key)");
  }
  return absl::OkStatus();
}

absl::Status ValidateLimits(const std::vector<Limit>& limits) {
  if (limits.empty() || limits.size() > kMaxLimits) {
    return absl::InvalidArgumentError(
        absl::StrCat("limits: must have 1..", kMaxLimits, " entries, got ", limits.size()));
  }
  for (size_t i = 0; i < limits.size(); ++i) {
    const Limit& limit = limits[i];
    const std::string path = absl::StrCat("limits[", i, "]");
    if (absl::string_view(MetricName(limit.metric)) == "unknown") {
      return absl::InvalidArgumentError(absl::StrCat(path, ".metric: unknown metric"));
    }
    if (absl::string_view(WindowKindName(limit.window)) == "unknown") {
      return absl::InvalidArgumentError(absl::StrCat(path, ".window: unknown window"));
    }
    if (limit.amount == 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".amount: must be > 0, got 0"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (limits[j].metric == limit.metric && limits[j].window == limit.window) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": same metric and window as limits[",
                                                       j, "] (", MetricName(limit.metric), " per ",
                                                       WindowKindName(limit.window), ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateWarnPercents(const std::vector<uint32_t>& percents) {
  for (size_t i = 0; i < percents.size(); ++i) {
    const std::string path = absl::StrCat("warn_percents[", i, "]");
    if (percents[i] < 1 || percents[i] > 100) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": must be 1..100, got ", percents[i]));
    }
    if (i > 0 && percents[i] <= percents[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(path,
                                                     ": must be ascending without repeats, got ",
                                                     percents[i], " after ", percents[i - 1]));
    }
  }
  return absl::OkStatus();
}

// Accepts IANA names only: no file paths and no "localtime", whose meaning depends on the host
// and would make shards disagree about where a day starts.
absl::Status ValidateTimeZone(const std::string& name) {
  if (name.empty() || name.front() == '/' || name.find("..") != std::string::npos ||
      name == "localtime") {
    return absl::InvalidArgumentError(
        absl::StrCat("time_zone: want an IANA name like \"Europe/Berlin\", got \"",
                     absl::CHexEscape(name), "\""));
  }
  absl::TimeZone zone;
  if (!absl::LoadTimeZone(name, &zone)) {
    return absl::InvalidArgumentError(absl::StrCat("time_zone: cannot load time zone \"",
                                                   absl::CHexEscape(name),
                                                   "\" from the system tz database"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// YAML parsing. yaml-cpp throws; ParseConfigYaml catches at the boundary.

// The YAML names of enum values: model.h's where it has them.
const char* NameOf(Metric metric) { return MetricName(metric); }
const char* NameOf(WindowKind window) { return WindowKindName(window); }
const char* NameOf(Mode mode) { return ModeName(mode); }
const char* NameOf(FailureMode mode) { return mode == FailureMode::kOpen ? "open" : "closed"; }
const char* NameOf(ExpiryAction action) {
  return action == ExpiryAction::kRelease ? "release" : "commit_estimate";
}

constexpr Metric kMetrics[] = {Metric::kInputTokens, Metric::kOutputTokens, Metric::kTotalTokens,
                               Metric::kRequests, Metric::kCostMicroUsd};
constexpr absl::string_view kCostUsd = "cost_usd";  // Metric alias with a USD amount.
constexpr WindowKind kWindows[] = {WindowKind::kMinute, WindowKind::kHour, WindowKind::kDay,
                                   WindowKind::kMonth};
constexpr Mode kModes[] = {Mode::kEnforce, Mode::kShadow};
constexpr FailureMode kFailureModes[] = {FailureMode::kOpen, FailureMode::kClosed};
constexpr ExpiryAction kExpiryActions[] = {ExpiryAction::kRelease, ExpiryAction::kCommitEstimate};

// Returns the value among `values` named `name`, or nullopt.
template <typename E>
std::optional<E> Lookup(absl::Span<const E> values, absl::string_view name) {
  for (E value : values) {
    if (name == NameOf(value)) return value;
  }
  return std::nullopt;
}

// Returns "a|b|c".
template <typename E>
std::string Choices(absl::Span<const E> values) {
  return absl::StrJoin(values, "|",
                       [](std::string* out, E value) { absl::StrAppend(out, NameOf(value)); });
}

std::string Child(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

std::string Item(absl::string_view path, size_t index) {
  return absl::StrCat(path, "[", index, "]");
}

// Returns "limits[1]" for "limits[1].amount", "limits" for "limits[1]", "" for "limits".
std::string ParentPath(absl::string_view path) {
  const size_t cut = path.find_last_of(".[");
  return cut == absl::string_view::npos ? "" : std::string(path.substr(0, cut));
}

// Returns the 1-based line of `node`, or 0 if yaml-cpp knows no position for it.
int LineOf(const YAML::Node& node) { return node.Mark().is_null() ? 0 : node.Mark().line + 1; }

// Returns InvalidArgument "<file>:<line>: <message>", leaving out the line if it is unknown (0).
absl::Status FileError(absl::string_view file, int line, absl::string_view message) {
  if (line <= 0) return absl::InvalidArgumentError(absl::StrCat(file, ": ", message));
  return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": ", message));
}

// The values of one YAML mapping by key; every key was allowed and appeared once.
using Fields = absl::flat_hash_map<std::string, YAML::Node>;

// Returns the value of `key`, or nullptr if the mapping lacks it.
const YAML::Node* Find(const Fields& fields, absl::string_view key) {
  auto it = fields.find(key);
  return it == fields.end() ? nullptr : &it->second;
}

// Turns one YAML document into a ConfigFile. Every error names file, line and field path.
// Not thread-safe; use one parser per document.
class ConfigParser {
 public:
  explicit ConfigParser(absl::string_view file_name) : file_name_(file_name) {}

  absl::StatusOr<ConfigFile> Parse(const YAML::Node& root);

 private:
  absl::Status Error(const YAML::Node& at, absl::string_view path, absl::string_view what) const;

  // Readers: on success fill *out; otherwise return the error and leave *out unspecified.
  absl::Status ReadMap(const YAML::Node& node, const std::string& path,
                       absl::Span<const absl::string_view> allowed, Fields* out);
  absl::Status ReadString(const YAML::Node& node, const std::string& path, std::string* out) const;
  absl::Status ReadUint(const YAML::Node& node, const std::string& path, uint64_t* out) const;
  absl::Status ReadUsd(const YAML::Node& node, const std::string& path, uint64_t* out) const;
  template <typename E>
  absl::Status ReadEnum(const YAML::Node& node, const std::string& path, absl::string_view what,
                        absl::Span<const E> values, E* out) const;
  absl::Status RequireKeys(const Fields& fields, const YAML::Node& node, const std::string& path,
                           absl::Span<const absl::string_view> keys) const;

  absl::Status ParsePolicies(const YAML::Node& node, std::vector<Policy>* out);
  absl::Status ParsePolicy(const YAML::Node& node, const std::string& path, Policy* out);
  absl::Status ParseSelector(const YAML::Node& node, const std::string& path, Selector* out);
  absl::Status ParseLimits(const YAML::Node& node, const std::string& path,
                           std::vector<Limit>* out);
  absl::Status ParseLimit(const YAML::Node& node, const std::string& path, Limit* out);
  absl::Status ParseOptions(const Fields& fields, const std::string& path, Policy* out);
  absl::Status ParseWarnPercents(const YAML::Node& node, const std::string& path,
                                 std::vector<uint32_t>* out);
  absl::Status CheckPolicy(const Policy& policy, const YAML::Node& node,
                           const std::string& path) const;
  absl::Status ParsePrices(const YAML::Node& node, std::optional<PriceTable>* out);
  absl::Status ParseModelPrices(const YAML::Node& node, const std::string& path,
                                std::vector<ModelPrice>* out);
  absl::Status ParseModelPrice(const YAML::Node& node, const std::string& path, ModelPrice* out);

  const std::string file_name_;
  absl::flat_hash_map<std::string, int> lines_;  // Field path -> line, of every field read.
};

absl::Status ConfigParser::Error(const YAML::Node& at, absl::string_view path,
                                 absl::string_view what) const {
  // Prefer the line recorded for the field: for an empty value (`key:`), yaml-cpp places the node
  // on the following line, and the key's line is the one to show.
  auto it = lines_.find(path);
  const int line = it != lines_.end() && it->second > 0 ? it->second : LineOf(at);
  if (path.empty()) return FileError(file_name_, line, what);
  return FileError(file_name_, line, absl::StrCat(path, ": ", what));
}

absl::Status ConfigParser::ReadMap(const YAML::Node& node, const std::string& path,
                                   absl::Span<const absl::string_view> allowed, Fields* out) {
  if (!node.IsMap()) return Error(node, path, "must be a mapping");
  out->clear();
  // yaml-cpp iterators yield each key/value pair by value; `it->first` would dangle.
  for (const auto& entry : node) {
    const YAML::Node& key = entry.first;
    const YAML::Node& value = entry.second;
    const std::string name = key.IsScalar() ? key.Scalar() : "?";
    const std::string field = Child(path, name);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return Error(key, field,
                   absl::StrCat("unknown key (want ", absl::StrJoin(allowed, "|"), ")"));
    }
    if (!out->emplace(name, value).second) {
      return FileError(file_name_, LineOf(key), absl::StrCat(field, ": repeated key"));
    }
    lines_[field] = value.IsNull() ? LineOf(key) : LineOf(value);
  }
  return absl::OkStatus();
}

absl::Status ConfigParser::ReadString(const YAML::Node& node, const std::string& path,
                                      std::string* out) const {
  if (node.IsNull()) {
    out->clear();
    return absl::OkStatus();
  }
  if (!node.IsScalar()) return Error(node, path, "must be a string");
  *out = node.Scalar();
  return absl::OkStatus();
}

absl::Status ConfigParser::ReadUint(const YAML::Node& node, const std::string& path,
                                    uint64_t* out) const {
  if (!node.IsScalar()) return Error(node, path, "must be an integer");
  const std::string& text = node.Scalar();
  if (text.empty() || !std::all_of(text.begin(), text.end(), absl::ascii_isdigit)) {
    return Error(node, path,
                 absl::StrCat("must be a non-negative integer in plain decimal digits, got \"",
                              absl::CHexEscape(text), "\""));
  }
  if (!absl::SimpleAtoi(text, out)) {
    return Error(node, path, absl::StrCat("out of range (max ", UINT64_MAX, "), got ", text));
  }
  return absl::OkStatus();
}

absl::Status ConfigParser::ReadUsd(const YAML::Node& node, const std::string& path,
                                   uint64_t* out) const {
  if (!node.IsScalar()) return Error(node, path, "must be a USD amount like \"2.50\"");
  absl::StatusOr<uint64_t> micros = ParseUsdToMicros(node.Scalar());
  // ParseUsdToMicros's message already quotes the amount and says what is wrong with it.
  if (!micros.ok()) return Error(node, path, micros.status().message());
  *out = *micros;
  return absl::OkStatus();
}

template <typename E>
absl::Status ConfigParser::ReadEnum(const YAML::Node& node, const std::string& path,
                                    absl::string_view what, absl::Span<const E> values,
                                    E* out) const {
  std::string text;
  if (absl::Status status = ReadString(node, path, &text); !status.ok()) return status;
  if (std::optional<E> value = Lookup(values, text); value.has_value()) {
    *out = *value;
    return absl::OkStatus();
  }
  return Error(node, path,
               absl::StrCat("unknown ", what, " \"", absl::CHexEscape(text), "\" (want ",
                            Choices(values), ")"));
}

absl::Status ConfigParser::RequireKeys(const Fields& fields, const YAML::Node& node,
                                       const std::string& path,
                                       absl::Span<const absl::string_view> keys) const {
  for (absl::string_view key : keys) {
    if (Find(fields, key) == nullptr) return Error(node, Child(path, key), "is required");
  }
  return absl::OkStatus();
}

absl::StatusOr<ConfigFile> ConfigParser::Parse(const YAML::Node& root) {
  static constexpr absl::string_view kKeys[] = {"policies", "prices"};
  Fields fields;
  if (!root.IsMap()) return Error(root, "", "must be a mapping with a `policies:` key");
  absl::Status status = ReadMap(root, "", kKeys, &fields);
  if (status.ok()) status = RequireKeys(fields, root, "", {"policies"});
  ConfigFile config;
  if (status.ok()) status = ParsePolicies(*Find(fields, "policies"), &config.policies);
  if (status.ok() && Find(fields, "prices") != nullptr) {
    status = ParsePrices(*Find(fields, "prices"), &config.prices);
  }
  if (!status.ok()) return status;
  return config;
}

absl::Status ConfigParser::ParsePolicies(const YAML::Node& node, std::vector<Policy>* out) {
  if (!node.IsSequence()) return Error(node, "policies", "must be a list (`[]` for none)");
  absl::flat_hash_map<std::string, int> id_lines;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string path = Item("policies", i);
    Policy policy;
    if (absl::Status status = ParsePolicy(node[i], path, &policy); !status.ok()) return status;
    const auto [it, inserted] = id_lines.emplace(policy.id, lines_[Child(path, "id")]);
    if (!inserted) {
      return FileError(file_name_, lines_[Child(path, "id")],
                       absl::StrCat(path, ".id: duplicate policy id \"", policy.id,
                                    "\" (first at line ", it->second, ")"));
    }
    out->push_back(std::move(policy));
  }
  return absl::OkStatus();
}

absl::Status ConfigParser::ParsePolicy(const YAML::Node& node, const std::string& path,
                                       Policy* out) {
  static constexpr absl::string_view kKeys[] = {"id",        "selector",     "limits",
                                                "mode",      "failure_mode", "warn_percents",
                                                "time_zone", "on_expiry"};
  Fields fields;
  absl::Status status = ReadMap(node, path, kKeys, &fields);
  if (status.ok()) status = RequireKeys(fields, node, path, {"id", "selector", "limits"});
  if (status.ok()) status = ReadString(*Find(fields, "id"), Child(path, "id"), &out->id);
  if (status.ok()) {
    status = ParseSelector(*Find(fields, "selector"), Child(path, "selector"), &out->selector);
  }
  if (status.ok()) {
    status = ParseLimits(*Find(fields, "limits"), Child(path, "limits"), &out->limits);
  }
  if (status.ok()) status = ParseOptions(fields, path, out);
  if (status.ok()) status = CheckPolicy(*out, node, path);
  out->source = absl::StrCat("file:", file_name_);
  return status;
}

absl::Status ConfigParser::ParseSelector(const YAML::Node& node, const std::string& path,
                                         Selector* out) {
  static constexpr absl::string_view kKeys[] = {"tenant", "team", "user", "api_key", "model"};
  const std::pair<absl::string_view, std::string Selector::*> members[] = {
      {"tenant", &Selector::tenant},
      {"team", &Selector::team},
      {"user", &Selector::user},
      {"api_key", &Selector::api_key},
      {"model", &Selector::model}};
  Fields fields;
  absl::Status status = ReadMap(node, path, kKeys, &fields);
  if (status.ok()) status = RequireKeys(fields, node, path, {"tenant"});
  for (const auto& [key, member] : members) {
    const YAML::Node* value = Find(fields, key);
    if (status.ok() && value != nullptr) {
      status = ReadString(*value, Child(path, key), &(out->*member));
    }
  }
  return status;
}

absl::Status ConfigParser::ParseLimits(const YAML::Node& node, const std::string& path,
                                       std::vector<Limit>* out) {
  if (!node.IsSequence()) return Error(node, path, "must be a list");
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string item = Item(path, i);
    lines_[item] = LineOf(node[i]);
    Limit limit;
    if (absl::Status status = ParseLimit(node[i], item, &limit); !status.ok()) return status;
    out->push_back(limit);
  }
  return absl::OkStatus();
}

absl::Status ConfigParser::ParseLimit(const YAML::Node& node, const std::string& path, Limit* out) {
  static constexpr absl::string_view kKeys[] = {"metric", "window", "amount"};
  Fields fields;
  absl::Status status = ReadMap(node, path, kKeys, &fields);
  if (status.ok()) status = RequireKeys(fields, node, path, kKeys);
  if (!status.ok()) return status;
  std::string metric;
  status = ReadString(*Find(fields, "metric"), Child(path, "metric"), &metric);
  if (!status.ok()) return status;
  const bool usd = metric == kCostUsd;
  std::optional<Metric> value = usd ? Metric::kCostMicroUsd : Lookup<Metric>(kMetrics, metric);
  if (!value.has_value()) {
    return Error(*Find(fields, "metric"), Child(path, "metric"),
                 absl::StrCat("unknown metric \"", absl::CHexEscape(metric), "\" (want ",
                              Choices<Metric>(kMetrics), "|", kCostUsd, ")"));
  }
  out->metric = *value;
  status = ReadEnum<WindowKind>(*Find(fields, "window"), Child(path, "window"), "window", kWindows,
                                &out->window);
  if (!status.ok()) return status;
  const std::string amount_path = Child(path, "amount");
  return usd ? ReadUsd(*Find(fields, "amount"), amount_path, &out->amount)
             : ReadUint(*Find(fields, "amount"), amount_path, &out->amount);
}

absl::Status ConfigParser::ParseOptions(const Fields& fields, const std::string& path,
                                        Policy* out) {
  absl::Status status;
  if (const YAML::Node* node = Find(fields, "mode"); node != nullptr) {
    status = ReadEnum<Mode>(*node, Child(path, "mode"), "mode", kModes, &out->mode);
  }
  if (const YAML::Node* node = Find(fields, "failure_mode"); status.ok() && node != nullptr) {
    status = ReadEnum<FailureMode>(*node, Child(path, "failure_mode"), "failure mode",
                                   kFailureModes, &out->failure_mode);
  }
  if (const YAML::Node* node = Find(fields, "on_expiry"); status.ok() && node != nullptr) {
    status = ReadEnum<ExpiryAction>(*node, Child(path, "on_expiry"), "expiry action",
                                    kExpiryActions, &out->on_expiry);
  }
  if (const YAML::Node* node = Find(fields, "warn_percents"); status.ok() && node != nullptr) {
    status = ParseWarnPercents(*node, Child(path, "warn_percents"), &out->warn_percents);
  }
  if (const YAML::Node* node = Find(fields, "time_zone"); status.ok() && node != nullptr) {
    status = ReadString(*node, Child(path, "time_zone"), &out->time_zone);
  }
  return status;
}

absl::Status ConfigParser::ParseWarnPercents(const YAML::Node& node, const std::string& path,
                                             std::vector<uint32_t>* out) {
  if (!node.IsSequence()) return Error(node, path, "must be a list like [80, 100]");
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string item = Item(path, i);
    lines_[item] = LineOf(node[i]);
    uint64_t percent = 0;
    if (absl::Status status = ReadUint(node[i], item, &percent); !status.ok()) return status;
    if (percent > 100) return Error(node[i], item, absl::StrCat("must be 1..100, got ", percent));
    out->push_back(static_cast<uint32_t>(percent));
  }
  return absl::OkStatus();
}

// Runs ValidatePolicy and points its error at the line of the field it names (or of the closest
// enclosing field that was read, or of the policy).
absl::Status ConfigParser::CheckPolicy(const Policy& policy, const YAML::Node& node,
                                       const std::string& path) const {
  const absl::Status status = ValidatePolicy(policy);
  if (status.ok()) return status;
  const absl::string_view message = status.message();
  const size_t colon = message.find(": ");
  int line = LineOf(node);
  if (colon != absl::string_view::npos) {
    for (std::string field(message.substr(0, colon)); !field.empty(); field = ParentPath(field)) {
      auto it = lines_.find(Child(path, field));
      if (it != lines_.end() && it->second > 0) {
        line = it->second;
        break;
      }
    }
  }
  return FileError(file_name_, line, absl::StrCat(path, ".", message));
}

absl::Status ConfigParser::ParsePrices(const YAML::Node& node, std::optional<PriceTable>* out) {
  static constexpr absl::string_view kKeys[] = {"version", "models"};
  Fields fields;
  absl::Status status = ReadMap(node, "prices", kKeys, &fields);
  if (status.ok()) status = RequireKeys(fields, node, "prices", kKeys);
  uint64_t version = 0;
  if (status.ok()) status = ReadUint(*Find(fields, "version"), "prices.version", &version);
  if (status.ok() && version == 0) {
    status = Error(*Find(fields, "version"), "prices.version", "must be > 0");
  }
  std::vector<ModelPrice> prices;
  if (status.ok()) status = ParseModelPrices(*Find(fields, "models"), "prices.models", &prices);
  if (!status.ok()) return status;
  absl::StatusOr<PriceTable> table = PriceTable::Create(version, std::move(prices));
  if (!table.ok()) return Error(*Find(fields, "models"), "prices.models", table.status().message());
  *out = *std::move(table);
  return absl::OkStatus();
}

absl::Status ConfigParser::ParseModelPrices(const YAML::Node& node, const std::string& path,
                                            std::vector<ModelPrice>* out) {
  if (!node.IsSequence()) return Error(node, path, "must be a list (`[]` for none)");
  absl::flat_hash_map<std::string, size_t> seen;  // "provider/model" -> index.
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string item = Item(path, i);
    ModelPrice price;
    if (absl::Status status = ParseModelPrice(node[i], item, &price); !status.ok()) return status;
    const auto [it, inserted] = seen.emplace(absl::StrCat(price.provider, "/", price.model), i);
    if (!inserted) {
      return Error(node[i], item,
                   absl::StrCat("same provider and model as ", Item(path, it->second)));
    }
    out->push_back(std::move(price));
  }
  return absl::OkStatus();
}

absl::Status ConfigParser::ParseModelPrice(const YAML::Node& node, const std::string& path,
                                           ModelPrice* out) {
  static constexpr absl::string_view kKeys[] = {"provider", "model", "input", "cached_input",
                                                "output"};
  Fields fields;
  absl::Status status = ReadMap(node, path, kKeys, &fields);
  if (status.ok()) {
    status = RequireKeys(fields, node, path, {"provider", "model", "input", "output"});
  }
  if (!status.ok()) return status;
  const struct {
    const char* key;
    IdKind kind;
    std::string* target;
  } names[] = {{"provider", IdKind::kProvider, &out->provider},
               {"model", IdKind::kModel, &out->model}};
  for (const auto& [key, kind, target] : names) {
    const YAML::Node& value = *Find(fields, key);
    const std::string field = Child(path, key);
    if (status = ReadString(value, field, target); !status.ok()) return status;
    if (status = common::ValidateId(kind, field, *target); !status.ok()) {
      return FileError(file_name_, LineOf(value), status.message());
    }
  }
  const struct {
    const char* key;
    uint64_t* target;
  } prices[] = {{"input", &out->input_per_mtok},
                {"cached_input", &out->cached_input_per_mtok},
                {"output", &out->output_per_mtok}};
  for (const auto& [key, target] : prices) {
    const YAML::Node* value = Find(fields, key);
    if (value == nullptr) continue;
    if (status = ReadUsd(*value, Child(path, key), target); !status.ok()) return status;
  }
  if (Find(fields, "cached_input") == nullptr) out->cached_input_per_mtok = out->input_per_mtok;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Matching.

// Applies one selector field (team, user, api_key or model) to the request's value. Returns
// false if it does not match; otherwise stores the counter scope's value in *counter.
bool MatchField(const std::string& selector, const std::string& request, std::string* counter) {
  if (selector.empty()) {
    counter->clear();
    return true;
  }
  if (selector == "*") {
    *counter = request;
    return !request.empty();
  }
  *counter = selector;
  return selector == request;
}

bool MatchSelector(const Selector& selector, const RequestScope& request,
                   storage::ScopeKey* counter) {
  if (selector.tenant.empty() || request.tenant.empty()) return false;
  if (selector.tenant != "*" && selector.tenant != request.tenant) return false;
  counter->tenant = request.tenant;
  return MatchField(selector.team, request.team, &counter->team) &&
         MatchField(selector.user, request.user, &counter->user) &&
         MatchField(selector.api_key, request.api_key, &counter->api_key) &&
         MatchField(selector.model, request.model, &counter->model);
}

// ---------------------------------------------------------------------------------------------
// Watching.

// Serializes the loads (and on_load calls) of every watcher, so that a callback never receives
// an older configuration after a newer one when ReloadNow() races the polling thread. A
// separate lock from mu_ lets callbacks call last_error() and the counters. Loads are rare.
ABSL_CONST_INIT absl::Mutex watcher_load_mu(absl::kConstInit);

// Identifies one version of a file by device, inode, size and modification time (ns), or names
// the stat() error. Any difference means "reload".
std::string FileFingerprint(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::StrCat("error:", errno);
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec);
}

// Writes one logfmt line to stderr.
void LogLine(absl::string_view level, absl::string_view message, absl::string_view path,
             absl::string_view details) {
  const std::string line =
      absl::StrCat("level=", level, " component=policy_watcher msg=\"", message, "\" path=\"",
                   absl::CHexEscape(path), "\" ", details, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

absl::Status ValidatePolicy(const Policy& policy) {
  absl::Status status = common::ValidateId(IdKind::kPolicyId, "id", policy.id);
  if (status.ok()) status = ValidateSelector(policy.selector);
  if (status.ok()) status = ValidateLimits(policy.limits);
  if (status.ok()) status = ValidateWarnPercents(policy.warn_percents);
  if (status.ok()) status = ValidateTimeZone(policy.time_zone);
  return status;
}

absl::StatusOr<ConfigFile> ParseConfigYaml(std::string_view yaml_text,
                                           std::string_view file_name_std) {
  // Debian's abseil has its own absl::string_view (not std's); convert once at the API edge.
  const absl::string_view file_name(file_name_std.data(), file_name_std.size());
  try {
    const std::vector<YAML::Node> documents = YAML::LoadAll(std::string(yaml_text));
    if (documents.empty()) {
      return FileError(file_name, 1, "no YAML document (want a mapping with a `policies:` key)");
    }
    if (documents.size() > 1) {
      return FileError(file_name, LineOf(documents[1]), "more than one YAML document");
    }
    return ConfigParser(file_name).Parse(documents[0]);
  } catch (const YAML::Exception& e) {
    std::string what = absl::StrCat("invalid YAML: ", e.msg);
    if (e.msg.find("alias") != std::string::npos) absl::StrAppend(&what, " (quote \"*\")");
    return FileError(file_name, e.mark.is_null() ? 0 : e.mark.line + 1, what);
  }
}

absl::StatusOr<ConfigFile> LoadConfigFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::string text;
  char buffer[8192];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  const int read_errno = errno;
  std::fclose(file);
  if (failed) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", std::strerror(read_errno)));
  }
  return ParseConfigYaml(text, path);
}

std::vector<MatchedLimit> MatchLimits(const std::vector<Policy>& policies,
                                      const RequestScope& scope) {
  std::vector<MatchedLimit> matched;
  for (const Policy& policy : policies) {
    storage::ScopeKey counter;
    if (!MatchSelector(policy.selector, scope, &counter)) continue;
    for (const Limit& limit : policy.limits) {
      matched.push_back(MatchedLimit{&policy, limit, counter});
    }
  }
  return matched;
}

std::vector<Policy> EffectivePolicies(const std::vector<Policy>& file_policies,
                                      const std::vector<Policy>& tenant_overrides,
                                      std::string_view tenant) {
  absl::flat_hash_map<absl::string_view, const Policy*> overrides;
  for (const Policy& policy : tenant_overrides) overrides.emplace(policy.id, &policy);
  std::vector<Policy> effective;
  absl::flat_hash_set<absl::string_view> replaced;
  for (const Policy& policy : file_policies) {
    if (policy.selector.tenant != "*" && policy.selector.tenant != tenant) continue;
    auto it = overrides.find(policy.id);
    if (it == overrides.end()) {
      effective.push_back(policy);
    } else {
      effective.push_back(*it->second);
      replaced.insert(policy.id);
    }
  }
  std::vector<const Policy*> rest;
  for (const Policy& policy : tenant_overrides) {
    if (!replaced.contains(policy.id)) rest.push_back(&policy);
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [](const Policy* a, const Policy* b) { return a->id < b->id; });
  for (const Policy* policy : rest) effective.push_back(*policy);
  return effective;
}

PolicyFileWatcher::PolicyFileWatcher(std::string path, absl::Duration poll_interval, OnLoad on_load)
    : path_(std::move(path)),
      poll_interval_(std::max(poll_interval, absl::Milliseconds(1))),
      on_load_(std::move(on_load)) {}

PolicyFileWatcher::~PolicyFileWatcher() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status PolicyFileWatcher::Start() {
  if (thread_.joinable()) {
    return absl::FailedPreconditionError("PolicyFileWatcher: already started");
  }
  absl::Status status = ReloadNow();
  thread_ = std::thread([this] { PollLoop(); });
  return status;
}

absl::Status PolicyFileWatcher::ReloadNow() {
  absl::MutexLock load_lock(&watcher_load_mu);
  // Stat before reading: a change made during the read then shows up at the next poll.
  std::string fingerprint = FileFingerprint(path_);
  absl::StatusOr<ConfigFile> config = LoadConfigFile(path_);
  {
    absl::MutexLock lock(&mu_);
    last_fingerprint_ = std::move(fingerprint);
    if (config.ok()) {
      ++successes_;
      last_error_.clear();
    } else {
      ++failures_;
      last_error_ = std::string(config.status().message());
    }
  }
  if (!config.ok()) {
    LogLine("warn", "reload failed; keeping the previous configuration", path_,
            absl::StrCat("error=\"", absl::CHexEscape(config.status().message()), "\""));
    return config.status();
  }
  LogLine("info", "configuration loaded", path_,
          absl::StrCat("policies=", config->policies.size(),
                       " prices_version=", config->prices ? config->prices->version() : 0));
  on_load_(*std::move(config));
  return absl::OkStatus();
}

void PolicyFileWatcher::PollLoop() {
  while (!stop_.WaitForNotificationWithTimeout(poll_interval_)) {
    const std::string fingerprint = FileFingerprint(path_);
    bool changed = false;
    {
      absl::MutexLock lock(&mu_);
      changed = fingerprint != last_fingerprint_;
    }
    // A failed reload is recorded and logged by ReloadNow; the previous config stays in force.
    if (changed) ReloadNow().IgnoreError();
  }
}

std::string PolicyFileWatcher::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

uint64_t PolicyFileWatcher::reload_successes() const {
  absl::MutexLock lock(&mu_);
  return successes_;
}

uint64_t PolicyFileWatcher::reload_failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

}  // namespace tokenmeter::aggregator
