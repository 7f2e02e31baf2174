#include "tests/faults/sidecar_fault_isolation.h"

#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/faults/sidecar_fault_procs.h"

extern char** environ;

namespace tokenmeter::faults {
namespace {

constexpr absl::Duration kToolTimeout = absl::Seconds(30);
constexpr char kTable[] = "tokenmeter_fault";

// What the namespace child reports through its pipe when it cannot exec the test.
struct ChildFailure {
  int step;  // 1 unshare, 2 make / private, 3 execve.
  int error;
};

[[noreturn]] void FailChild(int fd, int step) {
  const ChildFailure failure{step, errno};
  (void)!write(fd, &failure, sizeof(failure));
  _exit(127);
}

// Runs in the forked child: async-signal-safe calls only.
[[noreturn]] void EnterNamespacesAndExec(int clone_flags, char* const* argv, char* const* envp,
                                         int report_fd, pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(126);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (unshare(clone_flags) != 0) FailChild(report_fd, 1);
  if ((clone_flags & CLONE_NEWNS) != 0 &&
      mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    FailChild(report_fd, 2);
  }
  execve(argv[0], argv, envp);
  FailChild(report_fd, 3);
}

absl::StatusOr<int> WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {  // Bounded by the deadline.
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return absl::InternalError(absl::StrCat("waitpid: ", errno));
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return absl::DeadlineExceededError(absl::StrCat("namespace child still running after ",
                                                      absl::FormatDuration(timeout), "; killed"));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace

bool InNamespaceChild() { return std::getenv(kNamespaceChildEnv) != nullptr; }

absl::StatusOr<int> RunSelfInNewNamespaces(int clone_flags, const std::string& test_name,
                                           absl::Duration timeout) {
  char exe[PATH_MAX] = {0};
  if (readlink("/proc/self/exe", exe, sizeof(exe) - 1) <= 0) {
    return absl::InternalError(absl::StrCat("readlink /proc/self/exe: ", strerror(errno)));
  }
  std::vector<std::string> args = {exe, absl::StrCat("--gtest_filter=", test_name)};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.push_back(absl::StrCat(kNamespaceChildEnv, "=1"));
  std::vector<char*> argv, envp;
  for (std::string& a : args) argv.push_back(a.data());
  for (std::string& e : env) envp.push_back(e.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) EnterNamespacesAndExec(clone_flags, argv.data(), envp.data(), report[1], parent);
  close(report[1]);
  if (pid < 0) {
    close(report[0]);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  ChildFailure failure{};
  ssize_t got;
  do {
    got = read(report[0], &failure, sizeof(failure));  // EOF: the exec succeeded.
  } while (got < 0 && errno == EINTR);
  close(report[0]);
  if (got == static_cast<ssize_t>(sizeof(failure))) {
    (void)WaitChild(pid, absl::Seconds(10));
    static constexpr const char* kSteps[] = {"", "unshare(new namespaces)",
                                             "mount --make-rprivate /", "execve(self)"};
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot isolate the fault test: ", kSteps[failure.step],
        " failed: ", strerror(failure.error),
        ". The test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create its own network / "
        "mount namespace; it does not touch the host's network or mounts."));
  }
  return WaitChild(pid, timeout);
}

absl::Status BringLoopbackUp() {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  struct ifreq ifr = {};
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
  if (rc == 0) {
    ifr.ifr_flags |= IFF_UP;
    rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
  }
  const int error = errno;
  close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("set lo up: ", strerror(error)));
  return absl::OkStatus();
}

const char* ModeName(NetworkCut::Mode mode) {
  return mode == NetworkCut::Mode::kDrop ? "drop" : "tcp-reset";
}

NetworkCut::~NetworkCut() { (void)Remove(); }

absl::Status NetworkCut::Install(Mode mode, const std::string& address, int port) {
  if (installed_) return absl::FailedPreconditionError("a cut is already installed");
  const std::string verdict = mode == Mode::kDrop ? "drop" : "reject with tcp reset";
  const std::string rules = absl::StrCat(
      "table inet ", kTable, " {\n  chain input {\n",
      "    type filter hook input priority filter; policy accept;\n", "    ip daddr ", address,
      " tcp dport ", port, " ", verdict, "\n",                            // To the shard.
      "    ip saddr ", address, " tcp sport ", port, " ", verdict, "\n",  // Its replies.
      "  }\n}\n");
  const std::string path = absl::StrCat(dir_, "/nft-", ModeName(mode), ".rules");
  std::ofstream(path) << rules;
  if (absl::Status s = RunCommand({nft_, "-f", path}, path, kToolTimeout); !s.ok()) return s;
  installed_ = true;
  return absl::OkStatus();
}

absl::Status NetworkCut::Remove() {
  if (!installed_) return absl::OkStatus();
  installed_ = false;
  return RunCommand({nft_, "delete", "table", "inet", kTable}, dir_ + "/nft-delete", kToolTimeout);
}

LoopDisk::~LoopDisk() { (void)Unmount(); }

absl::Status LoopDisk::Create(int megabytes) {
  auto mkfs = FindTool("mkfs.ext4", "e2fsprogs");
  if (!mkfs.ok()) return mkfs.status();
  auto mount_tool = FindTool("mount", "mount");
  if (!mount_tool.ok()) return mount_tool.status();
  const std::string image = dir_ + "/disk.img";
  if (mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkdir ", dir_, ": ", strerror(errno)));
  }
  if (mkdir(mount_point().c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("mkdir ", mount_point(), ": ", strerror(errno)));
  }
  const int fd = open(image.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(megabytes) << 20) != 0) {
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrCat("create ", image, ": ", strerror(errno)));
  }
  close(fd);
  if (absl::Status s =
          RunCommand({*mkfs, "-q", "-F", "-m", "0", image}, dir_ + "/mkfs", kToolTimeout);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = RunCommand({*mount_tool, "-o", "loop", image, mount_point()},
                                  dir_ + "/mount", kToolTimeout);
      !s.ok()) {
    return s;
  }
  mounted_ = true;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> LoopDisk::FillLeaving(uint64_t keep_free) {
  const std::string path = mount_point() + "/filler";
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", path, ": ", strerror(errno)));
  std::vector<char> block(1 << 20, 'f');
  uint64_t written = 0;
  absl::Status status;
  for (int i = 0; i < (1 << 16); ++i) {  // Bounded: 64 GiB at most.
    absl::StatusOr<uint64_t> free_bytes = FreeBytes();
    if (!free_bytes.ok()) {
      status = free_bytes.status();
      break;
    }
    if (*free_bytes <= keep_free) break;
    const size_t chunk = std::min<uint64_t>(block.size(), *free_bytes - keep_free);
    const ssize_t n = write(fd, block.data(), chunk);
    if (n <= 0) {
      status = absl::InternalError(absl::StrCat("write filler: ", strerror(errno)));
      break;
    }
    written += n;
    if (fsync(fd) != 0) {  // Allocate now, so statvfs sees it.
      status = absl::InternalError(absl::StrCat("fsync filler: ", strerror(errno)));
      break;
    }
  }
  close(fd);
  if (!status.ok()) return status;
  return written;
}

absl::Status LoopDisk::DeleteFiller() {
  const std::string path = mount_point() + "/filler";
  if (unlink(path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("unlink ", path, ": ", strerror(errno)));
  }
  const int fd = open(mount_point().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || syncfs(fd) != 0) {
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrCat("syncfs: ", strerror(errno)));
  }
  close(fd);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> LoopDisk::FreeBytes() const {
  struct statvfs st;
  if (statvfs(mount_point().c_str(), &st) != 0) {
    return absl::InternalError(absl::StrCat("statvfs: ", strerror(errno)));
  }
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

absl::Status LoopDisk::Unmount() {
  if (!mounted_) return absl::OkStatus();
  auto umount_tool = FindTool("umount", "mount");
  if (!umount_tool.ok()) return umount_tool.status();
  mounted_ = false;
  return RunCommand({*umount_tool, mount_point()}, dir_ + "/umount", kToolTimeout);
}

}  // namespace tokenmeter::faults
