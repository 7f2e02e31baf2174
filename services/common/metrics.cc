#include "services/common/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace tokenmeter::common {
namespace {

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  // The shortest form that reads back as the same double.
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Renders {a="x",b="y"} (plus an extra label such as le), or "" without labels.
std::string LabelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      const std::string& extra_name = "", const std::string& extra_value = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "{" : ",", names[i], "=\"", EscapeLabelValue(values[i]),
                    "\"");
  }
  if (!extra_name.empty()) {
    absl::StrAppend(&out, out.empty() ? "{" : ",", extra_name, "=\"", extra_value, "\"");
  }
  if (!out.empty()) out += "}";
  return out;
}

void Header(std::string* out, const std::string& name, const std::string& help, const char* type) {
  absl::StrAppend(out, "# HELP ", name, " ", EscapeHelp(help), "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  double old = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
  }
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};
}

Registry::Registry() {
  absl::MutexLock lock(&mu_);
  folded_family_ = &counters_.emplace_back(
      "tokenmeter_metrics_folded_updates_total",
      "Updates routed to a family's \"other\" series because the family reached its series "
      "cap (a label set past the cap).",
      std::vector<std::string>{"family"}, 0, [] { return std::make_unique<Counter>(); }, nullptr);
  order_.push_back({MetricType::kCounter, folded_family_});
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names, size_t max_series,
                                      size_t keep_unfolded) {
  Counter* folded = max_series > 0 ? &folded_family_->WithLabels({name}) : nullptr;
  absl::MutexLock lock(&mu_);
  auto& family = counters_.emplace_back(
      name, help, std::move(label_names), max_series, [] { return std::make_unique<Counter>(); },
      folded, keep_unfolded);
  order_.push_back({MetricType::kCounter, &family});
  return family;
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names, size_t max_series) {
  Counter* folded = max_series > 0 ? &folded_family_->WithLabels({name}) : nullptr;
  absl::MutexLock lock(&mu_);
  auto& family = gauges_.emplace_back(
      name, help, std::move(label_names), max_series, [] { return std::make_unique<Gauge>(); },
      folded);
  order_.push_back({MetricType::kGauge, &family});
  return family;
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  auto& family = histograms_.emplace_back(
      name, help, std::move(label_names), 0,
      [bounds] { return std::make_unique<Histogram>(bounds); }, nullptr);
  order_.push_back({MetricType::kHistogram, &family});
  return family;
}

void Registry::AddCollector(std::function<void()> collect) {
  absl::MutexLock lock(&mu_);
  collectors_.push_back(std::move(collect));
}

std::string Registry::Serialize() const {
  std::vector<std::function<void()>> collectors;
  std::vector<Entry> order;
  {
    absl::MutexLock lock(&mu_);
    collectors = collectors_;
    order = order_;
  }
  for (const auto& collect : collectors) collect();
  std::string out;
  for (const Entry& e : order) {
    if (e.type == MetricType::kCounter || e.type == MetricType::kGauge) {
      const bool counter = e.type == MetricType::kCounter;
      auto emit = [&](const auto& family) {
        Header(&out, family.name(), family.help(), counter ? "counter" : "gauge");
        family.ForEach([&](const std::vector<std::string>& values, const auto& series) {
          absl::StrAppend(&out, family.name(), LabelText(family.label_names(), values), " ",
                          FormatValue(series.value()), "\n");
        });
      };
      if (counter) {
        emit(*static_cast<const Family<Counter>*>(e.family));
      } else {
        emit(*static_cast<const Family<Gauge>*>(e.family));
      }
      continue;
    }
    const auto& family = *static_cast<const Family<Histogram>*>(e.family);
    Header(&out, family.name(), family.help(), "histogram");
    family.ForEach([&](const std::vector<std::string>& values, const Histogram& h) {
      const std::vector<uint64_t> counts = h.CumulativeCounts();
      for (size_t i = 0; i <= h.bounds().size(); ++i) {
        const std::string le = i < h.bounds().size() ? FormatValue(h.bounds()[i]) : "+Inf";
        absl::StrAppend(&out, family.name(), "_bucket",
                        LabelText(family.label_names(), values, "le", le), " ", counts[i], "\n");
      }
      const std::string labels = LabelText(family.label_names(), values);
      absl::StrAppend(&out, family.name(), "_sum", labels, " ", FormatValue(h.sum()), "\n");
      absl::StrAppend(&out, family.name(), "_count", labels, " ", counts.back(), "\n");
    });
  }
  return out;
}

}  // namespace tokenmeter::common
