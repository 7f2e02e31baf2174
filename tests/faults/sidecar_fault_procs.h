// Real tokenmeter processes for the sidecar fault tests (tests/faults/sidecar_fault_test.cc),
// built on Subprocess (tests/faults/process.h):
//  - ShardProcess: one tokenmeter-aggregator shard on one data dir. Its first life listens on a
//    port of the kernel's choosing; every later life listens on that SAME port, because the
//    sidecar's shard list (--aggregators) is fixed for its whole life.
//  - SidecarProcess: one tokenmeter-sidecar on one data dir, serving a unix socket whose path
//    stays the same across restarts, so clients simply reconnect.
//  - RunCommand / FindTool: run a system tool (nft, mkfs.ext4, mount) to completion.
// Each life of a process logs (stderr) to a file of its own in the log dir.
//
// Thread-compatibility: drive each object from one thread, and start processes from a thread
// that outlives them (the test's main thread): a child gets SIGKILL when that thread exits.
#ifndef TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_PROCS_H_
#define TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_PROCS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/faults/process.h"

namespace tokenmeter::faults {

struct ShardConfig {
  std::string binary;  // Path of tokenmeter-aggregator.
  std::string data_dir;
  std::string log_dir;
  int index = 0;
  int count = 1;
  // Address the shard binds. Default "127.0.0.1"; "0.0.0.0" only inside a test's own network
  // namespace (where it still means loopback only).
  std::string listen_host = "127.0.0.1";
};

class ShardProcess {
 public:
  explicit ShardProcess(ShardConfig config) : config_(std::move(config)) {}

  // Starts a life and waits (30 s at most) for its "shard serving" line. A later life that
  // cannot bind the port yet is retried for a few seconds. Fails with the log's tail.
  absl::Status Start();
  // kill -9 and reap. Internal if the process had already died on its own.
  absl::Status Crash();
  // SIGSTOP: the shard stops reading, applying and acking (until Crash).
  absl::Status Freeze();
  // SIGTERM, 15 s grace, then SIGKILL. Internal unless the process exited with code 0.
  absl::Status Stop();
  // True while the current life runs (reaps it if it exited).
  bool Running();

  int port() const { return port_; }
  int index() const { return config_.index; }
  // Where the test's own clients reach this shard: "127.0.0.1:<port>".
  std::string target() const;
  int lives() const { return lives_; }
  std::string LogTail() const { return ReadFileTail(log_path_, 3000); }

 private:
  absl::Status StartOnce();

  const ShardConfig config_;
  std::unique_ptr<Subprocess> process_;
  std::string log_path_;
  int port_ = 0;
  int lives_ = 0;
};

struct SidecarConfig {
  std::string binary;  // Path of tokenmeter-sidecar.
  std::string data_dir;
  std::string log_dir;
  std::string socket_path;                 // The unix socket clients use.
  std::vector<std::string> shard_targets;  // In shard order (--aggregators).
  uint64_t max_queue_bytes = 0;            // 0: the sidecar's default.
};

class SidecarProcess {
 public:
  explicit SidecarProcess(SidecarConfig config) : config_(std::move(config)) {}

  // Starts a life and waits (30 s at most) for its "sidecar serving" line.
  absl::Status Start();
  absl::Status Crash();  // As ShardProcess::Crash.
  absl::Status Stop();   // As ShardProcess::Stop.
  bool Running();

  // gRPC target of the Report / Quota services: "unix:<socket_path>".
  std::string target() const { return "unix:" + config_.socket_path; }
  // The sum of every series of metric `name` on the current life's /metrics (127.0.0.1, a port
  // of its own) whose labels contain `label` (e.g. "shard=\"0\""; empty: all). NotFound if no
  // series matches, Unavailable if the scrape fails.
  absl::StatusOr<double> Metric(const std::string& name, const std::string& label = "") const;
  int lives() const { return lives_; }
  // Lines of every life's log that contain `needle`, oldest life first.
  std::vector<std::string> LogLines(const std::string& needle) const;
  std::string LogTail() const { return ReadFileTail(log_path_, 3000); }

 private:
  const SidecarConfig config_;
  std::unique_ptr<Subprocess> process_;
  std::string log_path_;
  std::vector<std::string> log_paths_;
  int lives_ = 0;
  int metrics_port_ = 0;
};

// The body of http://127.0.0.1:<port><path> (HTTP/1.0 GET, 5 s timeout). Unavailable on any
// failure or a status other than 200.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Absolute path of a system tool found in /usr/sbin, /sbin, /usr/bin or /bin; NotFound naming
// the Debian package that provides it otherwise.
absl::StatusOr<std::string> FindTool(const std::string& name, const std::string& package);

// Runs argv to completion (at most `timeout`), its output kept in `log_prefix`.{out,err}.
// Internal with the output's tail unless it exits with code 0.
absl::Status RunCommand(const std::vector<std::string>& argv, const std::string& log_prefix,
                        absl::Duration timeout);

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_PROCS_H_
