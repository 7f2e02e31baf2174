#include "services/common/validation.h"

#include "absl/strings/str_format.h"

namespace tokenmeter::common {
namespace {

struct Rule {
  size_t max_length;
  const char* charset_name;
  const char* extra;  // Punctuation allowed besides [A-Za-z0-9] (or [a-z0-9] if lower_only).
  bool lower_only;
};

Rule RuleFor(IdKind kind) {
  switch (kind) {
    case IdKind::kTenant:
    case IdKind::kTeam:
    case IdKind::kApiKey:
    case IdKind::kApplication:
    case IdKind::kPolicyId:
      return {64, "[A-Za-z0-9._-]", "._-", false};
    case IdKind::kUser:
      return {128, "[A-Za-z0-9._@+-]", "._@+-", false};
    case IdKind::kProvider:
      return {64, "[a-z0-9._-]", "._-", true};
    case IdKind::kModel:
    case IdKind::kEventId:
      return {128, "[A-Za-z0-9._:/-]", "._:/-", false};
    case IdKind::kProducerId:
      return {128, "[A-Za-z0-9._:-]", "._:-", false};
  }
  return {0, "", "", true};
}

bool Allowed(const Rule& rule, unsigned char c) {
  if (c >= 'a' && c <= 'z') return true;
  if (c >= '0' && c <= '9') return true;
  if (c >= 'A' && c <= 'Z') return !rule.lower_only;
  for (const char* p = rule.extra; *p != '\0'; ++p) {
    if (c == static_cast<unsigned char>(*p)) return true;
  }
  return false;
}

}  // namespace

size_t MaxLength(IdKind kind) { return RuleFor(kind).max_length; }

absl::Status ValidateId(IdKind kind, std::string_view field, std::string_view value) {
  const Rule rule = RuleFor(kind);
  if (value.empty() || value.size() > rule.max_length) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: must be 1..%d bytes of %s, got %d bytes",
                                                      field, rule.max_length, rule.charset_name,
                                                      value.size()));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (!Allowed(rule, c)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: invalid byte 0x%02x at offset %d (allowed: %s)", field, c, i, rule.charset_name));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateOptionalId(IdKind kind, std::string_view field, std::string_view value) {
  if (value.empty()) return absl::OkStatus();
  return ValidateId(kind, field, value);
}

}  // namespace tokenmeter::common
