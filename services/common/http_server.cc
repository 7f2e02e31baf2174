#include "services/common/http_server.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "civetweb.h"

namespace tokenmeter::common {
namespace {

void Reply(struct mg_connection* conn, int code, const char* reason, const char* content_type,
           const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, reason, content_type, body.size());
  mg_write(conn, body.data(), body.size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                              const Registry* registry,
                                                              Readiness readiness) {
  std::unique_ptr<HttpServer> server(new HttpServer(registry, std::move(readiness)));
  mg_init_library(0);
  const char* options[] = {"listening_ports",    listen.c_str(), "num_threads", "4",
                           "request_timeout_ms", "10000",        nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  server->context_ = mg_start(&callbacks, server.get(), options);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve HTTP on ", listen));
  }
  mg_set_request_handler(server->context_, "/metrics$", &HttpServer::HandleMetrics, server.get());
  mg_set_request_handler(server->context_, "/healthz$", &HttpServer::HandleHealth, server.get());
  mg_set_request_handler(server->context_, "/readyz$", &HttpServer::HandleReady, server.get());
  mg_server_port ports[4];
  const int n = mg_get_server_ports(server->context_, 4, ports);
  if (n > 0) server->port_ = ports[0].port;
  return server;
}

HttpServer::~HttpServer() {
  if (context_ != nullptr) mg_stop(context_);
}

int HttpServer::HandleMetrics(struct mg_connection* conn, void* self) {
  const auto* server = static_cast<HttpServer*>(self);
  Reply(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
        server->registry_->Serialize());
  return 200;
}

int HttpServer::HandleHealth(struct mg_connection* conn, void* self) {
  Reply(conn, 200, "OK", "text/plain", "ok\n");
  return 200;
}

int HttpServer::HandleReady(struct mg_connection* conn, void* self) {
  const auto* server = static_cast<HttpServer*>(self);
  const std::string why = server->readiness_ ? server->readiness_() : "";
  if (why.empty()) {
    Reply(conn, 200, "OK", "text/plain", "ready\n");
    return 200;
  }
  Reply(conn, 503, "Service Unavailable", "text/plain", why + "\n");
  return 503;
}

}  // namespace tokenmeter::common
