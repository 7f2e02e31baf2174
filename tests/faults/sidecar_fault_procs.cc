#include "tests/faults/sidecar_fault_procs.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace tokenmeter::faults {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr absl::Duration kStopGrace = absl::Seconds(15);
// A restarted shard may find its port still held for a moment (the kernel is tearing down the
// dead life's sockets): retry the start this many times, this far apart.
constexpr int kStartAttempts = 20;
constexpr absl::Duration kStartRetryPause = absl::Milliseconds(250);

// The value of ` key=value` in a logfmt line; empty if absent.
std::string LogField(const std::string& line, const std::string& key) {
  const std::string needle = absl::StrCat(" ", key, "=");
  const size_t at = line.find(needle);
  if (at == std::string::npos) return "";
  const size_t from = at + needle.size();
  return line.substr(from, line.find(' ', from) - from);
}

absl::Status ExpectKilled(absl::StatusOr<int> status, const std::string& what) {
  if (!status.ok()) return status.status();
  if (!WIFSIGNALED(*status) || WTERMSIG(*status) != SIGKILL) {
    return absl::InternalError(
        absl::StrCat(what, " had died on its own: ", DescribeWaitStatus(*status)));
  }
  return absl::OkStatus();
}

absl::Status ExpectCleanExit(absl::StatusOr<int> status, const std::string& what,
                             const std::string& log_tail) {
  if (!status.ok()) return status.status();
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat(
        what, " did not stop cleanly: ", DescribeWaitStatus(*status), "; log tail:\n", log_tail));
  }
  return absl::OkStatus();
}

bool IsRunning(std::unique_ptr<Subprocess>& process) {
  return process != nullptr && !process->Poll().has_value();
}

}  // namespace

std::string ShardProcess::target() const { return absl::StrCat("127.0.0.1:", port_); }

absl::Status ShardProcess::Start() {
  absl::Status status;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    status = StartOnce();
    // Only a restart on a known port is worth retrying: its port may still be held.
    if (status.ok() || port_ == 0 || !absl::IsAborted(status)) return status;
    absl::SleepFor(kStartRetryPause);
  }
  return status;
}

absl::Status ShardProcess::StartOnce() {
  if (IsRunning(process_)) return absl::FailedPreconditionError("shard already running");
  log_path_ = absl::StrCat(config_.log_dir, "/shard", config_.index, "-life", lives_++, ".log");
  SubprocessOptions options;
  options.stderr_path = log_path_;
  auto process =
      Subprocess::Start({config_.binary, "--listen", absl::StrCat(config_.listen_host, ":", port_),
                         "--data-dir", config_.data_dir, "--shard-index",
                         absl::StrCat(config_.index), "--shard-count", absl::StrCat(config_.count)},
                        options);
  if (!process.ok()) return process.status();
  process_ = *std::move(process);
  auto line = process_->WaitForLine(log_path_, "msg=\"shard serving\"", kStartTimeout);
  if (!line.ok()) {
    (void)process_->Kill();
    return absl::Status(line.status().code(),
                        absl::StrCat("shard ", config_.index, ": ", line.status().message(),
                                     "; log tail:\n", LogTail()));
  }
  int port = 0;
  if (!absl::SimpleAtoi(LogField(*line, "port"), &port) || port == 0 ||
      (port_ != 0 && port != port_)) {
    (void)process_->Kill();
    return absl::InternalError(absl::StrCat("unexpected port in: ", *line));
  }
  port_ = port;
  return absl::OkStatus();
}

absl::Status ShardProcess::Crash() {
  if (process_ == nullptr) return absl::FailedPreconditionError("shard never started");
  return ExpectKilled(process_->Kill(), absl::StrCat("shard ", config_.index));
}

absl::Status ShardProcess::Freeze() {
  if (process_ == nullptr) return absl::FailedPreconditionError("shard never started");
  return process_->Signal(SIGSTOP);
}

absl::Status ShardProcess::Stop() {
  if (process_ == nullptr) return absl::OkStatus();
  return ExpectCleanExit(process_->Stop(kStopGrace), absl::StrCat("shard ", config_.index),
                         LogTail());
}

bool ShardProcess::Running() { return IsRunning(process_); }

absl::Status SidecarProcess::Start() {
  if (IsRunning(process_)) return absl::FailedPreconditionError("sidecar already running");
  log_path_ = absl::StrCat(config_.log_dir, "/sidecar-life", lives_++, ".log");
  log_paths_.push_back(log_path_);
  std::vector<std::string> argv = {config_.binary,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--unix-socket",
                                   config_.socket_path,
                                   "--data-dir",
                                   config_.data_dir,
                                   "--aggregators",
                                   absl::StrJoin(config_.shard_targets, ",")};
  if (config_.max_queue_bytes > 0) {
    argv.insert(argv.end(), {"--max-queue-bytes", absl::StrCat(config_.max_queue_bytes)});
  }
  SubprocessOptions options;
  options.stderr_path = log_path_;
  auto process = Subprocess::Start(argv, options);
  if (!process.ok()) return process.status();
  process_ = *std::move(process);
  auto line = process_->WaitForLine(log_path_, "msg=\"sidecar serving\"", kStartTimeout);
  if (!line.ok()) {
    (void)process_->Kill();
    return absl::Status(line.status().code(), absl::StrCat("sidecar: ", line.status().message(),
                                                           "; log tail:\n", LogTail()));
  }
  if (!absl::SimpleAtoi(LogField(*line, "metrics_port"), &metrics_port_) || metrics_port_ == 0) {
    return absl::InternalError(absl::StrCat("no metrics port in: ", *line));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> SidecarProcess::Metric(const std::string& name,
                                              const std::string& label) const {
  absl::StatusOr<std::string> body = HttpGet(metrics_port_, "/metrics");
  if (!body.ok()) return body.status();
  double sum = 0;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(*body, '\n')) {
    if (!absl::StartsWith(line, name)) continue;
    const absl::string_view rest = line.substr(name.size());
    if (rest.empty() || (rest[0] != '{' && rest[0] != ' ')) continue;  // A longer name.
    if (!label.empty() && !absl::StrContains(rest, label)) continue;
    double value = 0;
    if (!absl::SimpleAtod(rest.substr(rest.rfind(' ') + 1), &value)) continue;
    sum += value;
    found = true;
  }
  if (!found) return absl::NotFoundError(absl::StrCat("no series ", name, " ", label));
  return sum;
}

absl::Status SidecarProcess::Crash() {
  if (process_ == nullptr) return absl::FailedPreconditionError("sidecar never started");
  return ExpectKilled(process_->Kill(), "sidecar");
}

absl::Status SidecarProcess::Stop() {
  if (process_ == nullptr) return absl::OkStatus();
  return ExpectCleanExit(process_->Stop(kStopGrace), "sidecar", LogTail());
}

bool SidecarProcess::Running() { return IsRunning(process_); }

std::vector<std::string> SidecarProcess::LogLines(const std::string& needle) const {
  std::vector<std::string> lines;
  for (const std::string& path : log_paths_) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find(needle) != std::string::npos) lines.push_back(line);
    }
  }
  return lines;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", strerror(errno)));
  struct timeval timeout = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
    char buffer[16384];
    for (int i = 0; i < 4096; ++i) {  // Bounded: 64 MiB at most.
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n <= 0) break;
      response.append(buffer, n);
    }
  }
  close(fd);
  if (!absl::StartsWith(response, "HTTP/1.1 200") && !absl::StartsWith(response, "HTTP/1.0 200")) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, " on port ", port, ": ", response.substr(0, 100)));
  }
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? std::string() : response.substr(body + 4);
}

absl::StatusOr<std::string> FindTool(const std::string& name, const std::string& package) {
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return absl::NotFoundError(absl::StrCat(
      name, " not found in /usr/sbin, /sbin, /usr/bin, /bin: install the Debian package ", package,
      " (deploy/local/install-deps.sh does)"));
}

absl::Status RunCommand(const std::vector<std::string>& argv, const std::string& log_prefix,
                        absl::Duration timeout) {
  SubprocessOptions options;
  options.stdout_path = log_prefix + ".out";
  options.stderr_path = log_prefix + ".err";
  auto process = Subprocess::Start(argv, options);
  if (!process.ok()) return process.status();
  absl::StatusOr<int> status = (*process)->Wait(timeout);
  if (!status.ok()) {
    (void)(*process)->Kill();
    return absl::DeadlineExceededError(
        absl::StrCat(absl::StrJoin(argv, " "), ": ", status.status().message()));
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), ": ",
                                            DescribeWaitStatus(*status),
                                            "; output: ", ReadFileTail(options.stdout_path, 1000),
                                            ReadFileTail(options.stderr_path, 1000)));
  }
  return absl::OkStatus();
}

}  // namespace tokenmeter::faults
