// SPDX-License-Identifier: Apache-2.0
#include "provider/core/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <syslog.h>

#include <atomic>
#include <stdexcept>

namespace p11ha::log {
namespace {

constexpr auto kStderrLevel = spdlog::level::warn;

std::shared_ptr<spdlog::logger> MakeStderrLogger() {
  auto logger = std::make_shared<spdlog::logger>("p11ha", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(kStderrLevel);
  logger->set_pattern("p11ha: %l: %v");
  return logger;
}

// The level of the logger in Current(), kept beside it. It is stored after the logger, so for a
// moment around Configure it may still answer for the old one: at most a line is lost.
std::atomic<int> current_level{kStderrLevel};

std::atomic<std::shared_ptr<spdlog::logger>>& Current() {
  // Leaked on purpose: members may still log from their own exit-time destructors.
  static auto* current = new std::atomic<std::shared_ptr<spdlog::logger>>(MakeStderrLogger());
  return *current;
}

}  // namespace

std::shared_ptr<spdlog::logger> Get() { return Current().load(std::memory_order_acquire); }

bool Enabled(spdlog::level::level_enum level) { return level >= current_level.load(std::memory_order_relaxed); }

void Configure(const std::string& level, const std::string& file) {
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") throw std::runtime_error("unknown log level '" + level + "'");
  std::shared_ptr<spdlog::logger> logger;
  if (file.empty()) {
    logger = std::make_shared<spdlog::logger>(
        "p11ha", std::make_shared<spdlog::sinks::syslog_sink_mt>("p11ha", LOG_PID, LOG_USER, false));
    logger->set_pattern("%l: %v");
  } else {
    logger = std::make_shared<spdlog::logger>("p11ha",
                                              std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false));
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%P:%t] %l: %v");
  }
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::trace);
  Current().store(std::move(logger), std::memory_order_release);
  current_level.store(parsed, std::memory_order_relaxed);
}

void Reset() {
  Current().store(MakeStderrLogger(), std::memory_order_release);
  current_level.store(kStderrLevel, std::memory_order_relaxed);
}

}  // namespace p11ha::log
