// The gRPC edge of error handling: absl::Status becomes grpc::Status exactly here.
#ifndef TOKENMETER_SERVICES_COMMON_GRPC_STATUS_H_
#define TOKENMETER_SERVICES_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace tokenmeter::common {

// Same canonical code (the two enums share numbering), same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients of our own services.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_GRPC_STATUS_H_
