// gRPC adapters of the unary services: QuotaService, UsageService, AdminService. Each method
// only adapts: it moves the request to a worker thread (engines block on disk), converts,
// calls the domain layer and finishes with ToGrpcStatus.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_UNARY_SERVICES_H_
#define TOKENMETER_SERVICES_AGGREGATOR_UNARY_SERVICES_H_

#include <functional>
#include <string>

#include "services/aggregator/policy_registry.h"
#include "services/aggregator/quota_engine.h"
#include "services/aggregator/usage_reader.h"
#include "services/common/clock.h"
#include "services/common/worker_pool.h"
#include "tokenmeter/v1/admin.grpc.pb.h"
#include "tokenmeter/v1/quota.grpc.pb.h"
#include "tokenmeter/v1/usage.grpc.pb.h"

namespace tokenmeter::aggregator {

class QuotaService final : public v1::QuotaService::CallbackService {
 public:
  QuotaService(QuotaEngine* engine, common::WorkerPool* pool) : engine_(engine), pool_(pool) {}

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

 private:
  QuotaEngine* const engine_;
  common::WorkerPool* const pool_;
};

class UsageService final : public v1::UsageService::CallbackService {
 public:
  UsageService(UsageReader* reader, common::WorkerPool* pool, common::Clock* clock)
      : reader_(reader), pool_(pool), clock_(clock) {}

  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const v1::GetUsageRequest* request,
                                     v1::GetUsageResponse* response) override;
  grpc::ServerUnaryReactor* TopSpenders(grpc::CallbackServerContext* context,
                                        const v1::TopSpendersRequest* request,
                                        v1::TopSpendersResponse* response) override;

 private:
  UsageReader* const reader_;
  common::WorkerPool* const pool_;
  common::Clock* const clock_;  // Defaults of `to` and `at`.
};

class AdminService final : public v1::AdminService::CallbackService {
 public:
  // `reload_error` returns the error of the last policy-file reload ("" if none).
  AdminService(PolicyRegistry* registry, UsageReader* reader, ShardIdentity shard,
               common::WorkerPool* pool, std::function<std::string()> reload_error)
      : registry_(registry),
        reader_(reader),
        shard_(shard),
        pool_(pool),
        reload_error_(std::move(reload_error)) {}

  grpc::ServerUnaryReactor* UpsertPolicy(grpc::CallbackServerContext* context,
                                         const v1::UpsertPolicyRequest* request,
                                         v1::UpsertPolicyResponse* response) override;
  grpc::ServerUnaryReactor* ListPolicies(grpc::CallbackServerContext* context,
                                         const v1::ListPoliciesRequest* request,
                                         v1::ListPoliciesResponse* response) override;
  grpc::ServerUnaryReactor* DeletePolicy(grpc::CallbackServerContext* context,
                                         const v1::DeletePolicyRequest* request,
                                         v1::DeletePolicyResponse* response) override;
  grpc::ServerUnaryReactor* SetPrices(grpc::CallbackServerContext* context,
                                      const v1::SetPricesRequest* request,
                                      v1::SetPricesResponse* response) override;
  grpc::ServerUnaryReactor* GetPrices(grpc::CallbackServerContext* context,
                                      const v1::GetPricesRequest* request,
                                      v1::GetPricesResponse* response) override;
  grpc::ServerUnaryReactor* ListDeadLetters(grpc::CallbackServerContext* context,
                                            const v1::ListDeadLettersRequest* request,
                                            v1::ListDeadLettersResponse* response) override;

 private:
  PolicyRegistry* const registry_;
  UsageReader* const reader_;
  const ShardIdentity shard_;
  common::WorkerPool* const pool_;
  const std::function<std::string()> reload_error_;
};

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_UNARY_SERVICES_H_
