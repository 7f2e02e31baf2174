#include "services/common/stop_signals.h"

#include <pthread.h>
#include <signal.h>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"

namespace tokenmeter::common {
namespace {

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void BlockStopSignals() {
  const sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForStopSignal() {
  const sigset_t set = StopSignals();
  int signal_number = 0;
  sigwait(&set, &signal_number);
  Log(LogLevel::kInfo, "draining", {{"signal", absl::StrCat(signal_number)}});
  return signal_number;
}

}  // namespace tokenmeter::common
