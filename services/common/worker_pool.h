// A fixed pool of threads running queued closures: where blocking work (RocksDB reads and
// fsyncs) runs, so it never occupies a gRPC reactor thread.
// Thread-safety: Submit() may be called from any thread.
#ifndef TOKENMETER_SERVICES_COMMON_WORKER_POOL_H_
#define TOKENMETER_SERVICES_COMMON_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tokenmeter::common {

class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  ~WorkerPool();  // Runs every queued closure, then joins the threads.

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Submit(std::function<void()> work);

  // Queues `work` unless `max_queued` closures already wait; returns false (and drops `work`)
  // then, so callers can shed load instead of queueing without bound.
  bool TrySubmit(std::function<void()> work, size_t max_queued);

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_WORKER_POOL_H_
