#include "tests/faults/process.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tokenmeter::faults {
namespace {

// Bounds of the polling interval of Wait / WaitForLine.
constexpr absl::Duration kFirstPoll = absl::Milliseconds(1);
constexpr absl::Duration kLongestPoll = absl::Milliseconds(20);

// Opens a redirect target before fork; -1 with errno on failure. Empty path: no redirect (-2).
int OpenRedirect(const std::string& path) {
  if (path.empty()) return -2;
  return open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

// Runs in the child between fork and exec: async-signal-safe calls only.
[[noreturn]] void ExecChild(char* const* argv, int out_fd, int err_fd, bool die_with_parent,
                            pid_t parent) {
  if (die_with_parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);  // The parent died before prctl took effect.
  }
  if (out_fd >= 0 && dup2(out_fd, STDOUT_FILENO) < 0) _exit(126);
  if (err_fd >= 0 && dup2(err_fd, STDERR_FILENO) < 0) _exit(126);
  // A fresh process: no blocked signals, default dispositions for the usual stop signals.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  execv(argv[0], argv);
  _exit(127);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const std::vector<std::string>& argv,
                                                              const SubprocessOptions& options) {
  if (argv.empty()) return absl::InvalidArgumentError("argv: empty");
  std::vector<std::string> args = argv;  // Owned copies: the child reads them after fork.
  std::vector<char*> arg_ptrs;
  for (std::string& a : args) arg_ptrs.push_back(a.data());
  arg_ptrs.push_back(nullptr);

  const int out_fd = OpenRedirect(options.stdout_path);
  const int err_fd = OpenRedirect(options.stderr_path);
  if (out_fd == -1 || err_fd == -1) {
    const std::string error = strerror(errno);
    if (out_fd >= 0) close(out_fd);
    if (err_fd >= 0) close(err_fd);
    return absl::InternalError(absl::StrCat("cannot open a redirect file: ", error));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) ExecChild(arg_ptrs.data(), out_fd, err_fd, options.kill_on_parent_death, parent);
  const int fork_errno = errno;
  if (out_fd >= 0) close(out_fd);
  if (err_fd >= 0) close(err_fd);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(fork_errno)));
  return std::unique_ptr<Subprocess>(new Subprocess(pid));
}

Subprocess::~Subprocess() {
  if (!wait_status_.has_value()) (void)Kill();
}

absl::Status Subprocess::Signal(int signal_number) {
  if (wait_status_.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("process ", pid_, " already reaped"));
  }
  if (kill(pid_, signal_number) != 0) {
    return absl::InternalError(
        absl::StrCat("kill(", pid_, ", ", signal_number, "): ", strerror(errno)));
  }
  return absl::OkStatus();
}

std::optional<int> Subprocess::Poll() {
  if (wait_status_.has_value()) return wait_status_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) wait_status_ = status;
  return wait_status_;
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = kFirstPoll;
  for (;;) {  // Bounded by the deadline.
    if (std::optional<int> status = Poll(); status.has_value()) return *status;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, kLongestPoll);
  }
}

absl::StatusOr<int> Subprocess::Kill() {
  if (wait_status_.has_value()) return *wait_status_;
  if (absl::Status s = Signal(SIGKILL); !s.ok()) return s;
  // SIGKILL cannot be caught; only a task stuck in the kernel (D state) takes longer.
  return Wait(absl::Seconds(30));
}

absl::StatusOr<int> Subprocess::Stop(absl::Duration grace) {
  if (wait_status_.has_value()) return *wait_status_;
  if (absl::Status s = Signal(SIGTERM); !s.ok()) return s;
  absl::StatusOr<int> status = Wait(grace);
  if (status.ok() || !absl::IsDeadlineExceeded(status.status())) return status;
  return Kill();
}

absl::StatusOr<std::string> Subprocess::WaitForLine(const std::string& path,
                                                    const std::string& needle,
                                                    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = kFirstPoll;
  for (;;) {  // Bounded by the deadline.
    // Check for exit before reading, so a line written just before exiting is still seen.
    const std::optional<int> exited = Poll();
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find(needle) != std::string::npos) return line;
    }
    if (exited.has_value()) {
      return absl::AbortedError(absl::StrCat("process ", pid_, " exited (",
                                             DescribeWaitStatus(*exited), ") before logging \"",
                                             needle, "\""));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no line with \"", needle, "\" in ", path,
                                                      " after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, kLongestPoll);
  }
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    return absl::StrCat("killed by signal ", sig, " (", strsignal(sig), ")");
  }
  return absl::StrCat("wait status ", wait_status);
}

std::string ReadFileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.size() > max_bytes) text.erase(0, text.size() - max_bytes);
  return text;
}

}  // namespace tokenmeter::faults
