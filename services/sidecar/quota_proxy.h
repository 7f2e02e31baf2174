// QuotaService as served by the sidecar: every call is forwarded to the tenant's owner shard
// with a deadline. When the shard cannot be reached (UNAVAILABLE or DEADLINE_EXCEEDED):
//  - Check / Reserve answer from the fallback: ALLOWED if the matching policies fail open,
//    DENIED if any enforced one fails closed, with fallback=true and the reason;
//  - Commit / Release are stored durably in the local queue and delivered later by the
//    DeferredCallRetrier (both are idempotent by reservation_id); Commit answers queued=true.
// Every other error of the shard (INVALID_ARGUMENT, NOT_FOUND, ...) is passed through as is.
//
// Thread-safety: thread-safe; forwarding is asynchronous (no thread waits on the network).
#ifndef TOKENMETER_SERVICES_SIDECAR_QUOTA_PROXY_H_
#define TOKENMETER_SERVICES_SIDECAR_QUOTA_PROXY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/aggregator/policy.h"
#include "services/common/worker_pool.h"
#include "services/sidecar/local_queue.h"
#include "services/sidecar/shard_channels.h"
#include "tokenmeter/v1/quota.grpc.pb.h"

namespace tokenmeter::sidecar {

// Kinds of deferred calls in the local queue.
inline constexpr uint8_t kDeferredCommit = 1;
inline constexpr uint8_t kDeferredRelease = 2;

// If `request` commits a fallback reservation (one the shard never saw), turns it into a usage
// event (event_id = reservation_id, counted once by the shard) in the local queue and sets
// *converted. Otherwise leaves the queue alone.
absl::Status CommitFallbackReservation(LocalQueue* queue, const ShardChannels* shards,
                                       const v1::CommitRequest& request, bool* converted);

struct QuotaProxyCounters {
  std::atomic<uint64_t> forwarded{0};
  std::atomic<uint64_t> fallback_allowed{0};
  std::atomic<uint64_t> fallback_denied{0};
  std::atomic<uint64_t> deferred{0};
};

// The policies of the tenants this sidecar has seen, refreshed from their owner shards, so the
// failure mode is known while a shard is down.
class PolicyCache {
 public:
  PolicyCache(const ShardChannels* shards, aggregator::FailureMode default_mode,
              absl::Duration refresh_interval);
  ~PolicyCache();

  // The failure mode for a request of `scope`: closed if any matching enforced policy says
  // closed; the default if the tenant's policies were never fetched.
  aggregator::FailureMode ModeFor(const aggregator::RequestScope& scope);

  // Makes sure the tenant's policies are fetched (within ~200 ms while its shard is up), so
  // its failure mode is known before an outage. Cheap; call on every forwarded request.
  void Note(const std::string& tenant);

 private:
  void RefreshLoop();
  void Fetch(const std::string& tenant);

  const ShardChannels* const shards_;
  const aggregator::FailureMode default_mode_;
  const absl::Duration refresh_interval_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<const std::vector<aggregator::Policy>>> policies_
      ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

class QuotaProxy final : public v1::QuotaService::CallbackService {
 public:
  QuotaProxy(const ShardChannels* shards, LocalQueue* queue, PolicyCache* policies,
             common::WorkerPool* pool, absl::Duration deadline);

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const v1::CheckRequest* request,
                                  v1::QuotaDecision* response) override;
  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const v1::ReserveRequest* request,
                                    v1::QuotaDecision* response) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* context,
                                   const v1::CommitRequest* request,
                                   v1::CommitResponse* response) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;

  const QuotaProxyCounters& counters() const { return counters_; }

 private:
  // Answers a Check/Reserve from the fallback.
  grpc::Status Fallback(const v1::Scope& scope, const grpc::Status& error, int shard,
                        v1::QuotaDecision* response);
  // A deadline for a forwarded call: ours, but never past the caller's (minus a margin for
  // answering from the fallback).
  std::shared_ptr<grpc::ClientContext> ForwardContext(const grpc::CallbackServerContext* caller);
  // Stores a Commit/Release for later delivery (on a worker: it fsyncs), lets `fill_response`
  // set the answer, and finishes the call (UNAVAILABLE if it could not be stored).
  void Defer(grpc::ServerUnaryReactor* reactor, uint8_t kind, std::string payload,
             std::function<void(bool stored)> fill_response);
  v1::QuotaService::Stub* StubFor(const std::string& tenant, int* shard);

  const ShardChannels* const shards_;
  LocalQueue* const queue_;
  PolicyCache* const policies_;
  common::WorkerPool* const pool_;
  const absl::Duration deadline_;
  std::vector<std::unique_ptr<v1::QuotaService::Stub>> stubs_;
  QuotaProxyCounters counters_;
};

// Delivers deferred Commit / Release calls once their shard is reachable again.
class DeferredCallRetrier {
 public:
  DeferredCallRetrier(const ShardChannels* shards, LocalQueue* queue, absl::Duration interval);
  ~DeferredCallRetrier();
  // Tries every deferred call once; returns how many were delivered (or refused for good).
  int RunOnce();

 private:
  const ShardChannels* const shards_;
  LocalQueue* const queue_;
  const absl::Duration interval_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace tokenmeter::sidecar

#endif  // TOKENMETER_SERVICES_SIDECAR_QUOTA_PROXY_H_
