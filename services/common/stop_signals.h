// SIGTERM / SIGINT handling of the long-running binaries: main() blocks the stop signals in
// every thread before it starts any, then waits for one synchronously and drains.
#ifndef TOKENMETER_SERVICES_COMMON_STOP_SIGNALS_H_
#define TOKENMETER_SERVICES_COMMON_STOP_SIGNALS_H_

namespace tokenmeter::common {

// Blocks SIGTERM and SIGINT in the calling thread and in every thread it creates afterwards.
// Call first thing in main(), before any thread exists.
void BlockStopSignals();

// Waits for SIGTERM or SIGINT (blocked by BlockStopSignals) and logs it; returns the signal.
int WaitForStopSignal();

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_STOP_SIGNALS_H_
