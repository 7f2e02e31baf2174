// Isolation for the fault tests that change the machine (firewall rules, mounts): the test
// re-runs itself in a child process inside NEW Linux namespaces, so whatever it changes exists
// only there and vanishes with the child.
//
//   TEST(Suite, Name) {
//     if (InNamespaceChild()) { ...scenario, with gtest assertions...; return; }
//     auto status = RunSelfInNewNamespaces(CLONE_NEWNET, "Suite.Name", timeout);
//     ASSERT_TRUE(status.ok()) << status.status();  // unshare refused, timeout, ...
//     EXPECT_EQ(DescribeWaitStatus(*status), "exit code 0");  // the child's verdict
//   }
//
// The child is the same test binary run with --gtest_filter=<that test> and the environment
// variable kNamespaceChildEnv set; it inherits stdout / stderr, so its gtest output shows in
// the parent's. It gets SIGKILL if the parent dies.
//
// NetworkCut installs nftables rules (a table of its own) in the current network namespace;
// LoopDisk makes a small ext4 file system on a loop device and mounts it in the current mount
// namespace. Use both only inside a namespace child. Thread-compatible.
#ifndef TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_ISOLATION_H_
#define TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_ISOLATION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenmeter::faults {

inline constexpr char kNamespaceChildEnv[] = "TOKENMETER_SIDECAR_FAULT_NS_CHILD";

// True in a child started by RunSelfInNewNamespaces.
bool InNamespaceChild();

// Runs this test binary's test `test_name` ("Suite.Name") in a child in new namespaces
// (`clone_flags`: CLONE_NEWNET and/or CLONE_NEWNS; a new mount namespace is made recursively
// private first, so no mount propagates back). Returns the child's wait status.
// FailedPrecondition if the namespaces cannot be created (not root, no CAP_SYS_ADMIN);
// DeadlineExceeded (child killed) after `timeout`.
absl::StatusOr<int> RunSelfInNewNamespaces(int clone_flags, const std::string& test_name,
                                           absl::Duration timeout);

// Sets the loopback interface up (a new network namespace starts with it down).
absl::Status BringLoopbackUp();

// A network fault between clients and one TCP port: nftables rules in a table of our own
// ("tokenmeter_fault"), matching packets to destination address `address` port `port` and the
// replies from it, so connections to another address of the same listener are unaffected.
class NetworkCut {
 public:
  enum class Mode {
    kDrop,   // Silent loss both ways: the peer learns nothing.
    kReset,  // Segments to the port are answered with a TCP reset; replies dropped.
  };
  // `work_dir` receives the rules file and nft's output.
  NetworkCut(std::string nft, std::string work_dir) : nft_(std::move(nft)), dir_(work_dir) {}
  ~NetworkCut();  // Remove().

  absl::Status Install(Mode mode, const std::string& address, int port);
  // Deletes the table. OK if none is installed.
  absl::Status Remove();

 private:
  const std::string nft_;
  const std::string dir_;
  bool installed_ = false;
};

const char* ModeName(NetworkCut::Mode mode);

// A small ext4 file system on a loop device, mounted at `<dir>/mnt`, and a filler file that
// takes all its free space.
class LoopDisk {
 public:
  explicit LoopDisk(std::string dir) : dir_(std::move(dir)) {}
  ~LoopDisk();  // Unmount().

  // Creates `<dir>/disk.img` of `megabytes`, mkfs.ext4 (no reserved blocks), mounts it.
  absl::Status Create(int megabytes);
  std::string mount_point() const { return dir_ + "/mnt"; }
  // Writes `<mount>/filler` until at most `keep_free` bytes are free; returns the bytes
  // written. (Fill before starting a RocksDB there: its WAL preallocates ~70 MB with fallocate,
  // so a disk filled later stays usable until that preallocation is used up.)
  absl::StatusOr<uint64_t> FillLeaving(uint64_t keep_free);
  // Deletes the filler and syncs the file system: the space is free again.
  absl::Status DeleteFiller();
  // Free bytes for an unprivileged writer (statvfs f_bavail).
  absl::StatusOr<uint64_t> FreeBytes() const;
  absl::Status Unmount();

 private:
  const std::string dir_;
  bool mounted_ = false;
};

}  // namespace tokenmeter::faults

#endif  // TOKENMETER_TESTS_FAULTS_SIDECAR_FAULT_ISOLATION_H_
