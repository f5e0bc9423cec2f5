// SPDX-License-Identifier: Apache-2.0
// `p11ha verify` and `p11ha sync [--dry-run]`: the reconciler (replication/reconciler.h) run
// from the CLI's own process over every configured member, logged in with the user PIN.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "config/config.h"
#include "provider/core/error.h"
#include "provider/member/member_pool.h"
#include "provider/member/member_token_session.h"
#include "replication/domain_key.h"
#include "replication/reconciler.h"
#include "tools/cli/command.h"
#include "tools/cli/secret_input.h"
#include "tools/cli/sync_report.h"

namespace p11ha::cli {
namespace {

using replication::CheckValue;
using replication::CheckValueHex;
using replication::ReconcileMember;
using replication::ReconcileReport;

struct SyncOptions {
  std::string config_path;
  std::string pin_file;
  bool json = false;
  bool dry_run = false;
};




// A member as far as the CLI got with it: connected, logged in, and its domain keys read.
struct Reached {
  std::unique_ptr<MemberTokenSession> session;
  std::vector<replication::FoundDomainKey> domain_keys;
  std::string note;  // why it was not reached
};

// Every configured member, connected and logged in, with the domain key chosen by majority.
class Cluster {
 public:
  Cluster(const config::Config& config, const SecureBytes& pin) : config_(config), pool_(config) {
    try {
      pool_.LoadAll();
    } catch (const CkError& e) {
      throw Stop{kExitUsage, config.source_path + ": " + OneLine(e.what())};
    }
    pool_.ConnectAll();
    std::string refused_by;
    for (std::size_t i = 0; i < pool_.size(); ++i) reached_.push_back(Reach(pool_.at(i), pin, refused_by));
    ChooseDomain();
  }
  ~Cluster() {
    reached_.clear();  // sessions close before their members go
    pool_.DisconnectAll();
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  std::vector<ReconcileMember>& members() { return members_; }
  std::string domain() const { return domain_ ? CheckValueHex(*domain_) : std::string(); }

 private:
  static Reached Reach(Member& member, const SecureBytes& pin, std::string& refused_by) {
    Reached reached;
    if (!member.up()) {
      reached.note = "down: " + OneLine(member.Status().last_error);
      return reached;
    }
    // Every wrong PIN counts towards the HSM's lockout: once one member refuses it, stop.
    if (!refused_by.empty()) {
      reached.note = "login not tried: " + refused_by + " refused the PIN";
      return reached;
    }
    if (CK_RV rv = member.Login(CKU_USER, pin); rv != CKR_OK) {
      reached.note = std::string("C_Login failed: ") + RvName(rv);
      if (PinRefused(rv)) refused_by = member.name();
      if (IsDeviceClass(rv)) member.MarkDown(reached.note);
      return reached;
    }
    try {
      reached.session = std::make_unique<MemberTokenSession>(member);
    } catch (const CkError& e) {
      reached.note = OneLine(e.what());
      return reached;
    }
    return reached;
  }

  // The cluster's domain is the check value most members hold, if one holds strictly more
  // members than any other; members holding another are reported and never used for copies.
  void ChooseDomain() {
    std::map<CheckValue, std::size_t> votes;
    std::vector<std::optional<CheckValue>> held(reached_.size());
    std::vector<bool> mixed(reached_.size(), false);
    for (std::size_t i = 0; i < reached_.size(); ++i) {
      Reached& member = reached_[i];
      if (!member.session) continue;
      try {
        member.domain_keys = replication::FindDomainKeys(*member.session, config_.domain_key_label);
      } catch (const replication::TokenError& e) {
        member.note = std::string(e.what()) + ": " + RvName(e.rv());
        member.session.reset();
        continue;
      }
      for (const replication::FoundDomainKey& key : member.domain_keys)
        mixed[i] = mixed[i] || key.check != member.domain_keys.front().check;
      if (member.domain_keys.empty() || mixed[i]) continue;
      held[i] = member.domain_keys.front().check;
      ++votes[*held[i]];
    }
    std::size_t best = 0, best_count = 0;
    for (const auto& [check, count] : votes) {
      if (count > best) {
        best = count;
        best_count = 1;
        domain_ = check;
      } else if (count == best) {
        ++best_count;
      }
    }
    if (best_count > 1) domain_.reset();

    for (std::size_t i = 0; i < reached_.size(); ++i) {
      Reached& member = reached_[i];
      ReconcileMember& out = members_.emplace_back();
      out.name = pool_.at(i).name();
      out.note = member.note;
      if (!member.session) continue;
      out.token = member.session.get();
      if (mixed[i]) {
        out.foreign_domain = true;
        out.note = "holds two different domain keys labelled \"" + config_.domain_key_label + "\"";
      } else if (held[i] && !domain_) {
        out.foreign_domain = true;
        out.note = "holds domain key " + CheckValueHex(*held[i]) + ", and no domain key is held by a majority";
      } else if (held[i] && *held[i] != *domain_) {
        out.foreign_domain = true;
        out.note = "holds domain key " + CheckValueHex(*held[i]) + ", not the cluster's " + CheckValueHex(*domain_);
      } else if (held[i]) {
        out.domain_key = member.domain_keys.front().handle;
      }
    }
  }

  const config::Config& config_;
  MemberPool pool_;
  std::vector<Reached> reached_;
  std::vector<ReconcileMember> members_;
  std::optional<CheckValue> domain_;
};

ReconcileReport RunPass(Cluster& cluster, const config::Config& config, bool dry_run) {
  replication::ReconcileOptions options;
  options.domain_label = config.domain_key_label;
  options.dry_run = dry_run;
  options.configured_members = config.members.size();
  options.local_keys_expected = config.non_extractable == config::NonExtractablePolicy::kLocal;
  options.rv_name = [](CK_RV rv) { return std::string(RvName(rv)); };
  return replication::Reconcile(cluster.members(), options);
}

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
  config::Config config;
  try {
    config = config::LoadConfig(path);
  } catch (const config::ConfigError& e) {
    throw Stop{kExitUsage, e.what()};
  }
  if (config.members.empty()) throw Stop{kExitUsage, path + ": no [[member]] to check"};
  SecureBytes pin;
  try {
    pin = ReadSecret(options.pin_file.empty() ? config.pin_file : options.pin_file, "user PIN",
                     "--pin-file (or [auth] pin_file)");
  } catch (const SecretInputError& e) {
    throw Stop{kExitUsage, e.what()};
  }

  Cluster cluster(config, pin);
  SyncContext context{verify ? "verify" : "sync", path, config.cluster_label, cluster.domain()};
  bool dry_run = verify || options.dry_run;
  ReconcileReport report = RunPass(cluster, config, dry_run);
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
    ReconcileReport check = RunPass(cluster, config, true);
    if (!Repairable(check) || pass > kMaxRepairPasses) {
      PrintRemainingText(check, std::cout);
      return check.Drift() ? kExitProblem : kExitOk;
    }
    std::cout << "drift found again (another process may be changing the members): repair pass " << pass << "\n";
    report = RunPass(cluster, config, false);
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
