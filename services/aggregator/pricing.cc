#include "services/aggregator/pricing.h"

#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tokenmeter::aggregator {
namespace {

using uint128 = unsigned __int128;

constexpr uint64_t kMicrosPerUnit = 1'000'000;            // micro-USD per USD, and tokens per Mtok.
constexpr uint64_t kMaxPricePerMtok = 1'000'000'000'000;  // $1M per Mtok, in micro-USD.
constexpr size_t kMaxDecimals = 6;

// Debian's abseil is built with its own absl::string_view, which absl::StrCat requires.
absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The index key of provider/model. Names never contain '\0' (Create rejects them), so distinct
// pairs have distinct keys.
std::string IndexKey(std::string_view provider, std::string_view model) {
  std::string key;
  key.reserve(provider.size() + 1 + model.size());
  key.append(provider).push_back('\0');
  key.append(model);
  return key;
}

// Returns InvalidArgument naming `price` if one of its fields is unusable.
absl::Status ValidatePrice(const ModelPrice& price) {
  const std::string name = absl::StrCat(price.provider, "/", price.model);
  if (price.provider.empty() || price.model.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("price entry \"", name, "\": provider and model must be non-empty"));
  }
  if (price.provider.find('\0') != std::string::npos ||
      price.model.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("price entry \"", name, "\": names must not contain NUL"));
  }
  for (const uint64_t per_mtok :
       {price.input_per_mtok, price.cached_input_per_mtok, price.output_per_mtok}) {
    if (per_mtok > kMaxPricePerMtok) {
      return absl::InvalidArgumentError(absl::StrCat("price entry \"", name, "\": price ", per_mtok,
                                                     " micro-USD per Mtok exceeds ",
                                                     kMaxPricePerMtok));
    }
  }
  return absl::OkStatus();
}

// Adds tokens * per_mtok micro-USD-per-Mtok to a cost kept as whole micro-USD plus a remainder
// in micro-micro-USD (1e-12 USD). Neither sum can overflow 128 bits: each whole part is below
// 2^128 / 1e6 < 2^108 and each remainder below 1e6.
void AddCharge(uint64_t tokens, uint64_t per_mtok, uint128* whole, uint128* remainder) {
  const uint128 charge = static_cast<uint128>(tokens) * per_mtok;  // < 2^128.
  *whole += charge / kMicrosPerUnit;
  *remainder += charge % kMicrosPerUnit;
}

// Parses a non-empty run of ASCII digits into *value. Returns false on any other character or
// if the value exceeds uint64.
bool ParseDigits(std::string_view digits, uint64_t* value) {
  if (digits.empty()) return false;
  uint64_t result = 0;
  for (const char c : digits) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (result > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    result = result * 10 + digit;
  }
  *value = result;
  return true;
}

}  // namespace

absl::StatusOr<PriceTable> PriceTable::Create(uint64_t version, std::vector<ModelPrice> prices) {
  PriceTable table;
  table.version_ = version;
  table.index_.reserve(prices.size());
  for (size_t i = 0; i < prices.size(); ++i) {
    const ModelPrice& price = prices[i];
    if (absl::Status status = ValidatePrice(price); !status.ok()) return status;
    if (!table.index_.try_emplace(IndexKey(price.provider, price.model), i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("price entry \"", price.provider, "/", price.model, "\" is duplicated"));
    }
  }
  table.prices_ = std::move(prices);
  return table;
}

const ModelPrice* PriceTable::Find(std::string_view provider, std::string_view model) const {
  const auto it = index_.find(IndexKey(provider, model));
  return it == index_.end() ? nullptr : &prices_[it->second];
}

absl::StatusOr<uint64_t> CostMicroUsd(const ModelPrice& price, const TokenCounts& tokens) {
  if (tokens.cached_input > tokens.input) {
    return absl::InvalidArgumentError(absl::StrCat("cached input tokens (", tokens.cached_input,
                                                   ") exceed input tokens (", tokens.input, ")"));
  }
  // sum(tokens * price) / 1e6 = sum(whole parts) + sum(remainders) / 1e6, so rounding the
  // remainders up rounds the total up, and no intermediate value can overflow.
  uint128 whole = 0;
  uint128 remainder = 0;
  AddCharge(tokens.input - tokens.cached_input, price.input_per_mtok, &whole, &remainder);
  AddCharge(tokens.cached_input, price.cached_input_per_mtok, &whole, &remainder);
  AddCharge(tokens.output, price.output_per_mtok, &whole, &remainder);
  const uint128 total = whole + (remainder + kMicrosPerUnit - 1) / kMicrosPerUnit;
  if (total > std::numeric_limits<uint64_t>::max()) {
    return absl::OutOfRangeError("cost exceeds 2^64-1 micro-USD");
  }
  return static_cast<uint64_t>(total);
}

absl::StatusOr<uint64_t> ParseUsdToMicros(std::string_view usd) {
  const auto invalid = [usd](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid USD amount \"", AbslView(usd), "\": ", AbslView(why)));
  };
  const size_t dot = usd.find('.');
  const std::string_view whole_digits = usd.substr(0, dot);
  const std::string_view decimals =
      dot == std::string_view::npos ? std::string_view() : usd.substr(dot + 1);
  if (decimals.size() > kMaxDecimals) return invalid("more than 6 decimals");
  uint64_t whole = 0;
  uint64_t fraction = 0;
  if (!ParseDigits(whole_digits, &whole) ||
      (dot != std::string_view::npos && !ParseDigits(decimals, &fraction))) {
    return invalid("expected digits, optionally followed by '.' and digits");
  }
  for (size_t i = decimals.size(); i < kMaxDecimals; ++i) fraction *= 10;
  if (whole > (std::numeric_limits<uint64_t>::max() - fraction) / kMicrosPerUnit) {
    return invalid("too large");
  }
  return whole * kMicrosPerUnit + fraction;
}

}  // namespace tokenmeter::aggregator
