// The model price table: integer micro-USD per million tokens per provider+model and token
// type, with a version that only grows. Cost is computed in integers, never floats.
//
// Thread-safety: a PriceTable is an immutable value once built; share it as
// std::shared_ptr<const PriceTable> and swap the pointer to publish a new version.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_PRICING_H_
#define TOKENMETER_SERVICES_AGGREGATOR_PRICING_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/aggregator/model.h"

namespace tokenmeter::aggregator {

// Price of one model in micro-USD per 1,000,000 tokens. Reasoning tokens are billed as
// output; cached input tokens at cached_input (input tokens not cached at input).
struct ModelPrice {
  std::string provider;
  std::string model;
  uint64_t input_per_mtok = 0;
  uint64_t cached_input_per_mtok = 0;
  uint64_t output_per_mtok = 0;
};

class PriceTable {
 public:
  // Builds a table. Returns InvalidArgument naming the entry if a provider/model pair repeats,
  // a name is empty, or a price exceeds 1e12 micro-USD per Mtok ($1M per Mtok).
  static absl::StatusOr<PriceTable> Create(uint64_t version, std::vector<ModelPrice> prices);

  PriceTable() = default;

  uint64_t version() const { return version_; }
  const std::vector<ModelPrice>& prices() const { return prices_; }

  // Returns the price of provider/model, or nullptr if there is none.
  const ModelPrice* Find(std::string_view provider, std::string_view model) const;

 private:
  uint64_t version_ = 0;
  std::vector<ModelPrice> prices_;
  absl::flat_hash_map<std::string, size_t> index_;  // "provider\0model" -> prices_ index.
};

// Returns the cost of `tokens` in micro-USD, rounded up to a whole micro-USD:
// ceil(((input - cached_input) * input_per_mtok + cached_input * cached_input_per_mtok +
//       output * output_per_mtok) / 1e6).
// Returns InvalidArgument if cached_input > input, and OutOfRange if the result does not fit
// in uint64.
absl::StatusOr<uint64_t> CostMicroUsd(const ModelPrice& price, const TokenCounts& tokens);

// Parses a decimal USD amount per million tokens ("2.5", "0.075", "15") into micro-USD
// exactly, without floating point. At most 6 decimals. Returns InvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseUsdToMicros(std::string_view usd);

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_PRICING_H_
