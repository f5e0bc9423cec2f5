// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <ostream>
#include <string>

#include "replication/reconciler.h"

namespace p11ha::cli {

// What `p11ha verify` and `p11ha sync` print around the reconciler's report.
struct SyncContext {
  std::string verb;  // "verify" or "sync"
  std::string config_path;
  std::string cluster_label;
  std::string domain;  // the cluster's domain check value (hex), empty when none was found
};

// One block per member: its object count, then one line per entry, e.g.
//   missing: certificate "web" id 3031 [3f2a1b9c0d4e5f60] (held by hsm-1) -> copy it from hsm-1: done
void PrintReconcileText(const SyncContext& context, const replication::ReconcileReport& report, std::ostream& out);

// The drift left after a sync, as re-checked by a dry run: only the entries still needing
// attention, and the verdict line.
void PrintRemainingText(const replication::ReconcileReport& check, std::ostream& out);

void PrintReconcileJson(const SyncContext& context, const replication::ReconcileReport& report, bool ok,
                        std::ostream& out);

}  // namespace p11ha::cli
