// Structured logs: one logfmt line per event on stderr
// (ts=2026-11-30T01:02:03.456Z level=info component=aggregator msg="..." key=value ...).
// Thread-safe: each line is written with one call.
#ifndef TOKENMETER_SERVICES_COMMON_LOG_H_
#define TOKENMETER_SERVICES_COMMON_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace tokenmeter::common {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// Sets the component name printed on every line (e.g. "aggregator") and the lowest level shown.
void InitLog(std::string component, LogLevel min_level);

using LogFields = std::initializer_list<std::pair<std::string_view, std::string>>;
void Log(LogLevel level, std::string_view message, LogFields fields = {});

}  // namespace tokenmeter::common

#endif  // TOKENMETER_SERVICES_COMMON_LOG_H_
