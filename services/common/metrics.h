// A small Prometheus client: Registry, Family, Counter, Gauge, Histogram with labels, and the
// text exposition format 0.0.4. (prometheus-cpp is not packaged for Debian bookworm.)
//
// Hot path: Counter::Inc, Gauge::Set/Add and Histogram::Observe are lock-free atomics. Family::
// WithLabels takes a mutex only to find or create a child; callers on hot paths keep the
// returned reference (children live as long as the registry).
//
// Cardinality guard: a family may cap its number of series; label sets past the cap are folded
// into a series whose label values are "other", and every update that lands there is counted in
// tokenmeter_metrics_folded_updates_total{family="..."}.
//
// Thread-safety: everything is thread-safe.
#ifndef TOKENMETER_SERVICES_COMMON_METRICS_H_
#define TOKENMETER_SERVICES_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tokenmeter::common {

class Counter {
 public:
  void Inc(double v = 1) { Add(&value_, v); }
  double value() const { return value_.load(std::memory_order_relaxed); }
  // For collectors that mirror a monotonic count kept elsewhere (e.g. by a library).
  void Mirror(double total) { value_.store(total, std::memory_order_relaxed); }

 private:
  friend class Gauge;
  static void Add(std::atomic<double>* target, double v) {
    double old = target->load(std::memory_order_relaxed);
    while (!target->compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
    }
  }
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) { Counter::Add(&value_, v); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds` are the upper bounds of the buckets, ascending (+Inf is implicit).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);

  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative count of observations <= bounds()[i]; index bounds().size() is +Inf.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // Per bucket, not cumulative.
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 50 µs .. 10 s.
std::vector<double> LatencyBuckets();

using Labels = std::vector<std::pair<std::string, std::string>>;

enum class MetricType { kCounter, kGauge, kHistogram };

template <typename T>
class Family {
 public:
  // Past `max_series`, label values are folded into "other" except the last `keep_unfolded`
  // ones (e.g. a token type that must survive the fold).
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         size_t max_series, std::function<std::unique_ptr<T>()> make, Counter* folded,
         size_t keep_unfolded = 0)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        max_series_(max_series),
        keep_unfolded_(keep_unfolded),
        make_(std::move(make)),
        folded_(folded) {}

  // Returns the series for `values` (one per label name, in order), creating it if needed.
  T& WithLabels(const std::vector<std::string>& values) {
    absl::MutexLock lock(&mu_);
    auto it = children_.find(values);
    if (it != children_.end()) return *it->second;
    if (max_series_ > 0 && children_.size() >= max_series_) {
      if (folded_ != nullptr) folded_->Inc();
      std::vector<std::string> other = values;
      for (size_t i = 0; i + keep_unfolded_ < other.size(); ++i) other[i] = "other";
      auto& slot = children_[other];
      if (!slot) slot = make_();
      return *slot;
    }
    auto& slot = children_[values];
    slot = make_();
    return *slot;
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return children_.size();
  }
  // Calls `fn(label values, series)` for every series, in label order.
  void ForEach(const std::function<void(const std::vector<std::string>&, const T&)>& fn) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) fn(values, *child);
  }

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const size_t max_series_;
  const size_t keep_unfolded_;
  const std::function<std::unique_ptr<T>()> make_;
  Counter* const folded_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Registry();

  // Names must match [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in _total. max_series 0 = no cap.
  // keep_unfolded: see Family.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {}, size_t max_series = 0,
                              size_t keep_unfolded = 0);
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {}, size_t max_series = 0);
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});

  // Runs before every exposition (e.g. to copy engine counters and RocksDB properties into
  // gauges). Must be cheap and thread-safe.
  void AddCollector(std::function<void()> collect);

  // Renders every family in the Prometheus text format 0.0.4.
  std::string Serialize() const;

 private:
  struct Entry {
    MetricType type;
    const void* family;
  };
  mutable absl::Mutex mu_;
  std::deque<Family<Counter>> counters_ ABSL_GUARDED_BY(mu_);
  std::deque<Family<Gauge>> gauges_ ABSL_GUARDED_BY(mu_);
  std::deque<Family<Histogram>> histograms_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> order_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> collectors_ ABSL_GUARDED_BY(mu_);
  Family<Counter>* folded_family_ = nullptr;
};

// Escapes a label value for the text format (\\, \", \n).
std::string EscapeLabelValue(const std::string& value);

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_METRICS_H_
