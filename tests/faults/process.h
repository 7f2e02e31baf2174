// A child process for fault tests: a real binary started with fork + execv that a test can
// signal (kill -9 included), wait for with a timeout, and stop by PID.
//
// The child's stdout / stderr can be redirected to files (opened before fork, so the child
// only runs async-signal-safe calls between fork and exec, as a multithreaded parent needs).
// By default the child is also sent SIGKILL if the parent dies (PR_SET_PDEATHSIG), so a crashed
// test leaves no process behind. Linux delivers that signal when the *thread* that forked exits,
// so start long-lived children from a thread that outlives them (e.g. the test's main thread).
//
// Thread-safety: a Subprocess is thread-compatible; use it from one thread (or guard it).
#ifndef TOKENMETER_TESTS_FAULTS_PROCESS_H_
#define TOKENMETER_TESTS_FAULTS_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenmeter::faults {

struct SubprocessOptions {
  // Files that receive the child's stdout / stderr (created or truncated). Empty: inherited.
  std::string stdout_path;
  std::string stderr_path;
  // Send the child SIGKILL when the thread that started it exits. Default: true.
  bool kill_on_parent_death = true;
};

class Subprocess {
 public:
  // Starts argv[0] (a path; no PATH lookup) with arguments argv[1..]. Fails with
  // InvalidArgument on an empty argv, Internal if a redirect file cannot be opened or fork
  // fails. A program that cannot be executed shows up as exit code 127 (see Poll / Wait).
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                           const SubprocessOptions& options = {});

  // Sends SIGKILL and reaps the child if it is still running.
  ~Subprocess();

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }

  // Sends `signal_number` to the child. FailedPrecondition if it has already been reaped.
  absl::Status Signal(int signal_number);

  // Reaps the child if it has exited and returns its wait status (as from waitpid; see
  // DescribeWaitStatus); std::nullopt while it is still running. Never blocks.
  std::optional<int> Poll();

  // Waits up to `timeout` for the child to exit and returns its wait status;
  // DeadlineExceeded if it is still running then (it keeps running).
  absl::StatusOr<int> Wait(absl::Duration timeout);

  // kill -9: sends SIGKILL and reaps the child. Returns its wait status.
  absl::StatusOr<int> Kill();

  // Graceful stop: SIGTERM, then up to `grace` for the child to exit; past that, SIGKILL.
  // Returns the wait status (WIFSIGNALED with SIGKILL means the grace period was exceeded).
  absl::StatusOr<int> Stop(absl::Duration grace);

  // Polls the text file `path` (typically the stderr_path of this child) until a line holding
  // `needle` appears, and returns that line (without its newline). Fails fast with Aborted if
  // the child exits first, DeadlineExceeded after `timeout`.
  absl::StatusOr<std::string> WaitForLine(const std::string& path, const std::string& needle,
                                          absl::Duration timeout);

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  std::optional<int> wait_status_;  // Set once the child has been reaped.
};

// "exit code 0", "killed by signal 9 (Killed)", ...
std::string DescribeWaitStatus(int wait_status);

// The last `max_bytes` of a file (all of it if shorter); empty if it cannot be read.
// Handy for failure messages that show a child's log.
std::string ReadFileTail(const std::string& path, size_t max_bytes);

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_PROCESS_H_
