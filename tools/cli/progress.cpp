// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/progress.h"

#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>

namespace p11ha::cli {

replication::TransferProgress ProgressPrinter(const std::string& what) {
  const bool terminal = isatty(STDERR_FILENO) == 1;
  auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [what, terminal, last](std::size_t done, std::size_t total) {
    constexpr std::size_t kLong = 20;
    if (total < kLong || done == 0) return;
    auto now = std::chrono::steady_clock::now();
    if (terminal) {
      constexpr std::size_t kWidth = 30;
      std::size_t filled = kWidth * done / total;
      std::cerr << "\r" << what << " [" << std::string(filled, '#') << std::string(kWidth - filled, ' ') << "] "
                << done << "/" << total << (done == total ? "\n" : "") << std::flush;
    } else if (done == total || now - *last >= std::chrono::seconds(2)) {
      std::cerr << what << ": " << done << " of " << total << "\n";
      *last = now;
    }
  };
}

}  // namespace p11ha::cli
