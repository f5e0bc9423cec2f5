// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "replication/archive_transfer.h"

namespace p11ha::cli {

// Progress of a long copy on stderr, as (done, total) arrives: a bar on a terminal, else one
// "WHAT: N of M" line every 2 s and one at the end; nothing for fewer than 20 steps.
replication::TransferProgress ProgressPrinter(const std::string& what);

}  // namespace p11ha::cli
