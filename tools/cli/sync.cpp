// SPDX-License-Identifier: Apache-2.0
// `p11ha verify` and `p11ha sync [--dry-run]`: the reconciler (replication/reconciler.h) run
// from the CLI's own process over every configured member, logged in with the user PIN.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <vector>

#include "config/config.h"
#include "provider/core/error.h"
#include "replication/reconciler.h"
#include "tools/cli/cluster.h"
#include "tools/cli/command.h"
#include "tools/cli/inputs.h"
#include "tools/cli/sync_report.h"

namespace p11ha::cli {
namespace {

using replication::ReconcileReport;

struct SyncOptions {
  std::string config_path;
  std::string pin_file;
  bool json = false;
  bool dry_run = false;
};

// A sync racing another process (another sync, an application creating objects) can leave
// what the other made at the same time, typically a duplicate; a few passes settle it.
constexpr int kMaxRepairPasses = 3;

bool Repairable(const ReconcileReport& check) {
  return std::any_of(check.members.begin(), check.members.end(), [](const replication::MemberReconcileReport& m) {
    return std::any_of(m.entries.begin(), m.entries.end(), [](const replication::DriftEntry& e) {
      return e.drift && e.state == replication::ActionState::kPlanned;
    });
  });
}

// verify: one dry pass. sync: a repairing pass, then a dry pass that decides the exit status,
// because other processes may have changed the members meanwhile (repairing again, up to
// kMaxRepairPasses in all, while that pass finds something to repair).
int Run(const SyncOptions& options, bool verify) {
  const std::string path = ConfigPathOrDefault(options.config_path);
  config::Config config = LoadConfigOrStop(path);
  if (config.members.empty()) throw Stop{kExitUsage, path + ": no [[member]] to check"};
  SecureBytes pin = UserPinOrStop(options.pin_file, config);

  Cluster cluster(config, pin);
  SyncContext context{verify ? "verify" : "sync", path, config.cluster_label, cluster.domain()};
  bool dry_run = verify || options.dry_run;
  ReconcileReport report = ReconcilePass(cluster, config, dry_run);
  if (dry_run) {
    if (options.json) {
      PrintReconcileJson(context, report, !report.Drift(), std::cout);
    } else {
      PrintReconcileText(context, report, std::cout);
    }
    return report.Drift() ? kExitProblem : kExitOk;
  }
  PrintReconcileText(context, report, std::cout);
  for (int pass = 2;; ++pass) {
    ReconcileReport check = ReconcilePass(cluster, config, true);
    if (!Repairable(check) || pass > kMaxRepairPasses) {
      PrintRemainingText(check, std::cout);
      return check.Drift() ? kExitProblem : kExitOk;
    }
    std::cout << "drift found again (another process may be changing the members): repair pass " << pass << "\n";
    report = ReconcilePass(cluster, config, false);
    PrintReconcileText(context, report, std::cout);
  }
}

Runner Register(CLI::App& sub, bool verify) {
  auto options = std::make_shared<SyncOptions>();
  AddConfigOption(sub, options->config_path);
  sub.add_option("--pin-file", options->pin_file, "The members' user PIN (else [auth] pin_file, else a prompt)")
      ->type_name("FILE");
  if (verify) {
    sub.add_flag("--json", options->json, "Machine-readable output");
    sub.footer(
        "Exit status: 0 when every member was checked and none differs, 1 on drift or when a member\n"
        "could not be checked (down, login failed, another domain key), 2 on bad usage or config.");
  } else {
    sub.add_flag("--dry-run", options->dry_run, "Report what would be repaired, change nothing");
    sub.footer(
        "Exit status: 0 when the cluster is consistent afterwards, 1 when drift remains (a member\n"
        "down, a conflict, a failed repair), 2 on bad usage or config.");
  }
  return [options, verify] {
    try {
      return Run(*options, verify);
    } catch (const Stop& stop) {
      std::cerr << "p11ha: " << OneLine(stop.message) << "\n";
      return stop.code;
    }
  };
}

}  // namespace

Runner RegisterVerify(CLI::App& sub) { return Register(sub, true); }
Runner RegisterSync(CLI::App& sub) { return Register(sub, false); }

}  // namespace p11ha::cli
