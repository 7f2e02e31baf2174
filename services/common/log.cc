#include "services/common/log.h"

#include <unistd.h>

#include <atomic>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tokenmeter::common {
namespace {

std::string& Component() {
  static std::string component = "tokenmeter";
  return component;
}
std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// Quotes a value if it holds spaces, quotes or '=', escaping quotes, backslashes, newlines.
void AppendValue(std::string* out, std::string_view v) {
  const bool quote = v.empty() || v.find_first_of(" \"=\\\n\t") != std::string_view::npos;
  if (!quote) {
    out->append(v);
    return;
  }
  out->push_back('"');
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
  out->push_back('"');
}

}  // namespace

void InitLog(std::string component, LogLevel level) {
  Component() = std::move(component);
  min_level.store(static_cast<int>(level));
}

void Log(LogLevel level, std::string_view message, LogFields fields) {
  if (static_cast<int>(level) < min_level.load(std::memory_order_relaxed)) return;
  std::string line = "ts=";
  line += absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  line += " level=";
  line += LevelName(level);
  line += " component=";
  line += Component();
  line += " msg=";
  AppendValue(&line, message);
  for (const auto& [key, value] : fields) {
    line.push_back(' ');
    line.append(key);
    line.push_back('=');
    AppendValue(&line, value);
  }
  line.push_back('\n');
  // One write(2) per line keeps lines from different threads whole.
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace tokenmeter::common
