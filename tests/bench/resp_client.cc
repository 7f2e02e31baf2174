#include "tests/bench/resp_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace tokenmeter::bench {
namespace {

// Reads the line at data[pos..] up to CRLF; returns the position after CRLF or npos.
size_t LineEnd(std::string_view data, size_t pos) {
  const size_t cr = data.find("\r\n", pos);
  return cr == std::string_view::npos ? std::string_view::npos : cr + 2;
}

bool ParseInt(std::string_view digits, int64_t* out) {
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *out);
  return ec == std::errc() && ptr == digits.data() + digits.size();
}

}  // namespace

int64_t ParseRespReply(std::string_view data, RespReply* reply) {
  if (data.empty()) return 0;
  const size_t end = LineEnd(data, 1);
  if (end == std::string_view::npos) return 0;
  const std::string_view line = data.substr(1, end - 3);
  switch (data[0]) {
    case '+':
    case '-':
      reply->type = data[0] == '+' ? RespReply::kStatus : RespReply::kError;
      reply->text.assign(line.data(), line.size());
      return static_cast<int64_t>(end);
    case ':':
      reply->type = RespReply::kInteger;
      return ParseInt(line, &reply->integer) ? static_cast<int64_t>(end) : -1;
    case '$': {
      int64_t len = 0;
      if (!ParseInt(line, &len)) return -1;
      if (len < 0) {
        reply->type = RespReply::kNil;
        return static_cast<int64_t>(end);
      }
      if (data.size() < end + static_cast<size_t>(len) + 2) return 0;
      reply->type = RespReply::kBulk;
      reply->text.assign(data.data() + end, static_cast<size_t>(len));
      return static_cast<int64_t>(end + static_cast<size_t>(len) + 2);
    }
    case '*': {
      int64_t count = 0;
      if (!ParseInt(line, &count)) return -1;
      if (count < 0) {
        reply->type = RespReply::kNil;
        return static_cast<int64_t>(end);
      }
      reply->type = RespReply::kArray;
      reply->elements.assign(static_cast<size_t>(count), RespReply());
      size_t pos = end;
      for (RespReply& element : reply->elements) {
        const int64_t used = ParseRespReply(data.substr(pos), &element);
        if (used <= 0) return used;
        pos += static_cast<size_t>(used);
      }
      return static_cast<int64_t>(pos);
    }
    default:
      return -1;
  }
}

absl::StatusOr<std::unique_ptr<RespConnection>> RespConnection::Connect(const std::string& host,
                                                                        int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host));
  }
  const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  const int rc = fd < 0 ? -1 : connect(fd, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);
  if (rc != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", host, ":", port, ": ", error));
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return std::unique_ptr<RespConnection>(new RespConnection(fd));
}

RespConnection::~RespConnection() { close(fd_); }

void RespConnection::AppendBulk(std::string_view arg) {
  char header[24];
  header[0] = '$';
  auto [ptr, ec] = std::to_chars(header + 1, header + sizeof(header) - 2, arg.size());
  *ptr++ = '\r';
  *ptr++ = '\n';
  out_.append(header, static_cast<size_t>(ptr - header));
  out_.append(arg.data(), arg.size());
  out_.append("\r\n", 2);
}

void RespConnection::Append(std::initializer_list<std::string_view> args) {
  out_.push_back('*');
  out_.append(std::to_string(args.size()));
  out_.append("\r\n", 2);
  for (std::string_view arg : args) AppendBulk(arg);
}

void RespConnection::Append(const std::vector<std::string>& args) {
  out_.push_back('*');
  out_.append(std::to_string(args.size()));
  out_.append("\r\n", 2);
  for (const std::string& arg : args) AppendBulk(arg);
}

absl::Status RespConnection::Flush() {
  size_t sent = 0;
  while (sent < out_.size()) {
    const ssize_t n = send(fd_, out_.data() + sent, out_.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  out_.clear();
  return absl::OkStatus();
}

absl::StatusOr<int> RespConnection::Poll(absl::Duration timeout,
                                         const std::function<void(const RespReply&)>& on_reply) {
  pollfd p{fd_, POLLIN, 0};
  const timespec wait = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  const int ready = ppoll(&p, 1, &wait, nullptr);
  if (ready < 0 && errno != EINTR) {
    return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
  }
  if (ready <= 0) return 0;
  return ReadAvailable(on_reply);
}

absl::StatusOr<int> RespConnection::ReadAvailable(
    const std::function<void(const RespReply&)>& on_reply) {
  if (in_pos_ > 0 && in_pos_ * 2 > in_.size()) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
  const size_t old_size = in_.size();
  in_.resize(old_size + (256 << 10));
  const ssize_t n = recv(fd_, in_.data() + old_size, 256 << 10, MSG_DONTWAIT);
  in_.resize(old_size + static_cast<size_t>(n > 0 ? n : 0));
  if (n == 0) return absl::UnavailableError("redis closed the connection");
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return 0;
    return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  }
  int replies = 0;
  RespReply reply;
  for (;;) {
    const int64_t used = ParseRespReply(std::string_view(in_).substr(in_pos_), &reply);
    if (used < 0) return absl::InternalError("RESP protocol error");
    if (used == 0) break;
    in_pos_ += static_cast<size_t>(used);
    on_reply(reply);
    ++replies;
  }
  return replies;
}

absl::StatusOr<RespReply> RespConnection::Call(const std::vector<std::string>& args,
                                               absl::Duration timeout) {
  Append(args);
  if (absl::Status s = Flush(); !s.ok()) return s;
  const absl::Time deadline = absl::Now() + timeout;
  RespReply result;
  bool done = false;
  while (!done) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("redis reply timeout");
    auto got = Poll(std::min(left, absl::Milliseconds(100)), [&](const RespReply& r) {
      result = r;
      done = true;
    });
    if (!got.ok()) return got.status();
  }
  return result;
}

}  // namespace tokenmeter::bench
