// The HTTP side of every process: /metrics (Prometheus text format 0.0.4), /healthz (the
// process runs) and /readyz (it can serve: the readiness callback says why not), served by
// civetweb (the HTTP server prometheus-cpp uses) on its own small thread pool.
// Thread-safety: Start/Stop from one thread.
#ifndef TOKENMETER_SERVICES_COMMON_HTTP_SERVER_H_
#define TOKENMETER_SERVICES_COMMON_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/common/metrics.h"

struct mg_context;
struct mg_connection;

namespace tokenmeter::common {

class HttpServer {
 public:
  // Returns "" when ready, else the reason (served as 503 on /readyz).
  using Readiness = std::function<std::string()>;

  // Listens on "host:port" (port 0 = any free port, see port()).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                           const Registry* registry,
                                                           Readiness readiness);
  ~HttpServer();

  int port() const { return port_; }

 private:
  HttpServer(const Registry* registry, Readiness readiness)
      : registry_(registry), readiness_(std::move(readiness)) {}
  static int HandleMetrics(::mg_connection* conn, void* self);
  static int HandleHealth(::mg_connection* conn, void* self);
  static int HandleReady(::mg_connection* conn, void* self);

  const Registry* const registry_;
  const Readiness readiness_;
  mg_context* context_ = nullptr;
  int port_ = 0;
};

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_HTTP_SERVER_H_
