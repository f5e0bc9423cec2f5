// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <string>

namespace p11ha::log {

// p11ha's private logger. It never touches spdlog's default registry, because the host process
// may use spdlog itself. Before C_Initialize (and after C_Finalize) lines go to stderr at warn.
std::shared_ptr<spdlog::logger> Get();

// Whether the current logger writes lines of `level`. Cheaper than Get(), which takes a
// reference to the logger: for the hot paths that log only now and then.
bool Enabled(spdlog::level::level_enum level);

// Replaces the logger for one run. `file` empty means syslog. Throws std::runtime_error when
// the sink cannot be opened or the level is unknown.
void Configure(const std::string& level, const std::string& file);

// Back to the pre-initialisation stderr logger.
void Reset();

}  // namespace p11ha::log
