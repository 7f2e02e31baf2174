// A minimal Redis client for the benchmark peer: RESP2 over one blocking TCP socket, built for
// pipelining. Commands are appended to a write buffer and sent with Flush(); replies are parsed
// as they arrive and handed to a callback in order (Redis answers each connection in order).
// Dependency-free on purpose (hiredis is not a build dependency of tokenmeter).
//
// Thread-compatible: one connection per thread.
#ifndef TOKENMETER_TESTS_BENCH_RESP_CLIENT_H_
#define TOKENMETER_TESTS_BENCH_RESP_CLIENT_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenmeter::bench {

struct RespReply {
  enum Type { kStatus, kError, kInteger, kBulk, kNil, kArray };
  Type type = kNil;
  int64_t integer = 0;
  std::string text;                 // kStatus, kError, kBulk.
  std::vector<RespReply> elements;  // kArray.
};

class RespConnection {
 public:
  // Connects to host:port (TCP_NODELAY). Unavailable if the connection fails.
  static absl::StatusOr<std::unique_ptr<RespConnection>> Connect(const std::string& host, int port);
  ~RespConnection();

  RespConnection(const RespConnection&) = delete;
  RespConnection& operator=(const RespConnection&) = delete;

  // Appends one command (a RESP array of bulk strings) to the write buffer.
  void Append(std::initializer_list<std::string_view> args);
  void Append(const std::vector<std::string>& args);

  // Writes the whole buffer (blocking). Unavailable on a socket error.
  absl::Status Flush();

  // Waits up to `timeout` for data, reads what is there, and calls `on_reply` for every complete
  // reply, in order. Returns how many replies were handed over (0 on timeout).
  // Unavailable on a socket error or EOF, Internal on a protocol error.
  absl::StatusOr<int> Poll(absl::Duration timeout,
                           const std::function<void(const RespReply&)>& on_reply);

  // Reads what the socket holds now (call when poll() says it is readable) and hands over
  // every complete reply, like Poll().
  absl::StatusOr<int> ReadAvailable(const std::function<void(const RespReply&)>& on_reply);

  // The socket, for callers that poll several connections at once.
  int fd() const { return fd_; }

  // Sends one command and waits (up to `timeout`) for its reply. Only when nothing else is in
  // flight. DeadlineExceeded on timeout.
  absl::StatusOr<RespReply> Call(const std::vector<std::string>& args,
                                 absl::Duration timeout = absl::Seconds(30));

 private:
  explicit RespConnection(int fd) : fd_(fd) {}
  void AppendBulk(std::string_view arg);

  int fd_;
  std::string out_;
  std::string in_;
  size_t in_pos_ = 0;  // Start of the first unparsed byte of in_.
};

// Parses one reply at the start of `data`. Returns the bytes consumed, 0 if `data` holds only a
// part of a reply, or -1 on a protocol error.
int64_t ParseRespReply(std::string_view data, RespReply* reply);

}  // namespace tokenmeter::bench

#endif  // TOKENMETER_TESTS_BENCH_RESP_CLIENT_H_
