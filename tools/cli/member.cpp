// SPDX-License-Identifier: Apache-2.0
// `p11ha member check|add NAME`: admission of a configured member (issue 5). `check` runs the
// admission checks (member_checks.h) and changes nothing; `add` runs them, then copies the
// cluster's objects to NAME (and, with --preserve-existing, NAME's objects to the cluster),
// all or nothing, and ends with a dry reconcile like `p11ha verify`.
#include <CLI/CLI.hpp>

#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "config/config.h"
#include "provider/core/error.h"
#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/reconciler.h"
#include "tools/cli/cluster.h"
#include "tools/cli/command.h"
#include "tools/cli/inputs.h"
#include "tools/cli/member_checks.h"
#include "tools/cli/progress.h"
#include "tools/cli/sync_report.h"

namespace p11ha::cli {
namespace {

using replication::IsKeyClass;
using replication::ObjectKind;
using replication::ObjectSummary;

struct MemberOptions {
  std::string config_path;
  std::string pin_file;
  std::string name;
  bool preserve_existing = false;
};

// A key that cannot leave its member: no copy, no compare (ObjectSummary::unwrappable).
bool StaysLocal(const ObjectSummary& summary) { return IsKeyClass(summary.object_class) && (summary.unwrappable || !summary.by_wrap); }

std::string Join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

std::string Count(std::size_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// One object to copy: from any of `sources` (member index, handle) to every member of `targets`.
struct CopyItem {
  const ObjectSummary* summary = nullptr;
  std::vector<std::pair<std::size_t, CK_OBJECT_HANDLE>> sources;
  std::vector<std::size_t> targets;
};

struct AddPlan {
  std::vector<CopyItem> to_target;      // the cluster's objects NAME lacks
  std::vector<CopyItem> to_peers;       // --preserve-existing: NAME's objects the others lack
  std::vector<std::string> left_local;  // NAME's objects that cannot be replicated
  std::vector<std::string> deleted;     // NAME's objects a tombstone names: p11ha sync removes them
  std::size_t Copies() const {
    std::size_t n = to_target.size();
    for (const CopyItem& item : to_peers) n += item.targets.size();
    return n;
  }
};

AddPlan Plan(const Admission& admission, bool preserve) {
  AddPlan plan;
  const MemberObjects& own = admission.objects[admission.target];
  std::set<std::string> tombstoned = own.tombstoned;
  std::map<std::string, CopyItem> cluster;
  for (std::size_t peer : admission.peers) {
    const MemberObjects& held = admission.objects[peer];
    tombstoned.insert(held.tombstoned.begin(), held.tombstoned.end());
    for (const auto& [identity, copies] : held.objects) {
      CopyItem& item = cluster[identity];
      item.summary = item.summary ? item.summary : &copies.front().summary;
      item.sources.emplace_back(peer, copies.front().handle);
    }
  }
  // Objects a tombstone names, and keys that cannot leave their member, are the reconciler's
  // to report; they are not copied here.
  for (auto& [identity, item] : cluster) {
    if (own.objects.contains(identity) || tombstoned.contains(identity) || StaysLocal(*item.summary)) continue;
    item.targets = {admission.target};
    plan.to_target.push_back(std::move(item));
  }
  if (!preserve) return plan;
  for (const auto& [identity, copies] : own.objects) {
    const ObjectSummary& summary = copies.front().summary;
    if (summary.kind != ObjectKind::kApplication) continue;
    CopyItem item{&summary, {{admission.target, copies.front().handle}}, {}};
    for (std::size_t peer : admission.peers)
      if (!admission.objects[peer].objects.contains(identity)) item.targets.push_back(peer);
    if (item.targets.empty()) continue;
    if (tombstoned.contains(identity)) {
      plan.deleted.push_back(replication::DescribeObject(summary));
    } else if (StaysLocal(summary)) {
      plan.left_local.push_back(replication::DescribeObject(summary));
    } else {
      plan.to_peers.push_back(std::move(item));
    }
  }
  return plan;
}

// Runs an AddPlan; on any failure destroys what it created and throws Stop (exit 1).
class Copier {
 public:
  Copier(Cluster& cluster, const Admission& admission, std::size_t total)
      : cluster_(cluster), admission_(admission), total_(total), progress_(ProgressPrinter("copied")) {}

  void Copy(const CopyItem& item) {
    const std::string what = replication::DescribeObject(*item.summary);
    replication::CopyPlan plan;
    std::string why;
    std::size_t source = item.sources.front().first;
    bool prepared = false;
    for (const auto& [member, handle] : item.sources) {
      try {
        plan = replication::PrepareCopy(Token(member), handle, admission_.domain_keys[member]);
        source = member;
        prepared = true;
        break;
      } catch (const replication::CopyError& e) {
        why = Describe(e);
      }
    }
    if (!prepared) Fail("reading " + what + " for the copy failed: " + why);
    for (std::size_t target : item.targets) {
      try {
        created_.emplace_back(target, replication::ApplyCopy(plan, Token(target), admission_.domain_keys[target]));
      } catch (const replication::CopyError& e) {
        Fail("copying " + what + " from " + Name(source) + " to " + Name(target) + " failed: " + Describe(e));
      }
      progress_(++done_, total_);
    }
  }

  std::size_t created() const { return created_.size(); }

 private:
  replication::TokenSession& Token(std::size_t member) { return *cluster_.members()[member].token; }
  const std::string& Name(std::size_t member) { return cluster_.members()[member].name; }
  static std::string Describe(const replication::CopyError& e) { return std::string(e.what()) + ": " + RvName(e.rv()); }

  // A failed admin action leaves no half-state: every object this run made goes again.
  [[noreturn]] void Fail(const std::string& message) {
    std::vector<std::string> kept;
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) {
      if (CK_RV rv = Token(it->first).DestroyObject(it->second); rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID)
        kept.push_back(Name(it->first) + " handle " + std::to_string(it->second) + " (" + RvName(rv) + ")");
    }
    std::string outcome = created_.empty() ? "nothing was written"
                          : kept.empty()   ? "the " + std::to_string(created_.size()) +
                                               " objects this run had copied were destroyed again; nothing was changed"
                                         : std::to_string(kept.size()) + " of the " + std::to_string(created_.size()) +
                                               " objects this run copied could not be destroyed again: " + Join(kept) +
                                               "; run p11ha verify";
    throw Stop{kExitProblem, message + "; " + outcome};
  }

  Cluster& cluster_;
  const Admission& admission_;
  const std::size_t total_;
  std::size_t done_ = 0;
  replication::TransferProgress progress_;
  std::vector<std::pair<std::size_t, CK_OBJECT_HANDLE>> created_;
};

int Add(Cluster& cluster, const config::Config& config, const std::string& path, const Admission& admission,
        bool preserve) {
  const std::string& name = config.members[admission.target].name;
  const AddPlan plan = Plan(admission, preserve);
  std::vector<std::string> peers;
  for (std::size_t peer : admission.peers) peers.push_back(config.members[peer].name);
  {
    Copier copier(cluster, admission, plan.Copies());
    if (!plan.to_target.empty())
      std::cout << name << ": copying " << plan.to_target.size() << " objects from the cluster\n";
    for (const CopyItem& item : plan.to_target) copier.Copy(item);
    if (!plan.to_peers.empty()) {
      std::cout << name << ": copying " << plan.to_peers.size() << " of its objects to " << Join(peers) << "\n";
    }
    for (const CopyItem& item : plan.to_peers) copier.Copy(item);
  }
  std::cout << name << ": copied " << plan.to_target.size() << " objects from the cluster";
  if (preserve) std::cout << "; kept its own, " << plan.to_peers.size() << " of them copied to the others";
  std::cout << "\n";
  for (const std::string& object : plan.left_local) std::cout << "left local on " << name << ": " << object << "\n";
  if (!plan.left_local.empty()) {
    std::cout << name << ": " << Count(plan.left_local.size(), "object")
              << " cannot be replicated (not wrappable under the domain key); they stay on " << name
              << " only, and p11ha status shows them\n";
  }
  for (const std::string& object : plan.deleted) {
    std::cout << "deleted elsewhere: " << object << " on " << name
              << " is named by a tombstone; p11ha sync removes it\n";
  }

  replication::ReconcileReport report = ReconcilePass(cluster, config, true);
  PrintReconcileText(SyncContext{"verify", path, config.cluster_label, cluster.domain()}, report, std::cout);
  std::cout.flush();
  if (report.Drift()) std::cerr << "p11ha: drift remains after adding " << name << " (see above): run p11ha sync\n";
  std::cout << name << " is in the config: running processes use it from their next C_Initialize\n";
  return report.Drift() ? kExitProblem : kExitOk;
}

int Run(const MemberOptions& options, bool adding) {
  const std::string path = ConfigPathOrDefault(options.config_path);
  config::Config config;
  config = LoadConfigOrStop(path);
  std::optional<std::size_t> target;
  for (std::size_t i = 0; i < config.members.size(); ++i)
    if (config.members[i].name == options.name) target = i;
  if (!target) throw Stop{kExitUsage, path + ": no member named '" + options.name + "' (add it to the config first)"};
  SecureBytes pin = UserPinOrStop(options.pin_file, config);

  Cluster cluster(config, pin);
  std::cout << "member " << (adding ? "add " : "check ") << options.name << " (config " << path << ")\n";
  Admission admission = CheckAdmission(cluster, config, *target, {adding, options.preserve_existing});
  PrintChecks(admission, std::cout);
  const std::size_t failures = admission.Failures();
  if (!adding) {
    std::cout << options.name << ": " << (failures == 0 ? "all checks passed" : Count(failures, "check") + " FAILED")
              << "\n";
    return failures == 0 ? kExitOk : kExitProblem;
  }
  if (failures > 0) {
    throw Stop{kExitProblem, "member add " + options.name + " refused: " + Count(failures, "check") +
                                 " failed (see above); nothing was written"};
  }
  return Add(cluster, config, path, admission, options.preserve_existing);
}

}  // namespace

Runner RegisterMember(CLI::App& sub) {
  auto options = std::make_shared<MemberOptions>();
  sub.require_subcommand(1, 1);
  auto common = [&options](CLI::App& verb) {
    verb.add_option("NAME", options->name, "A member named in the config")->required();
    AddConfigOption(verb, options->config_path);
    verb.add_option("--pin-file", options->pin_file, "The members' user PIN (else [auth] pin_file, else a prompt)")
        ->type_name("FILE");
  };
  CLI::App* check = sub.add_subcommand(
      "check", "Check a configured member against the others (PIN, domain key, mechanisms, token); changes nothing");
  common(*check);
  check->footer(
      "Exit status: 0 when every check passed, 1 when a check failed (the member is down, refuses the\n"
      "PIN, lacks the domain key or mechanisms, ...), 2 on bad usage or config (no member NAME).");
  CLI::App* add =
      sub.add_subcommand("add", "Check a configured member, then copy the cluster's objects to it (all or nothing)");
  common(*add);
  add->add_flag("--preserve-existing", options->preserve_existing,
                "Keep the member's own objects and copy them to the other members");
  add->footer(
      "Exit status: 0 when the member was added and no drift remains, 1 when a check failed or the\n"
      "member holds objects (without --preserve-existing) and nothing was written, when a copy failed\n"
      "and was undone, or when drift remains afterwards; 2 on bad usage or config (no member NAME).");
  return [options, add] {
    try {
      return Run(*options, add->parsed());
    } catch (const Stop& stop) {
      std::cout.flush();  // the check lines above the message, also when both go to one pipe
      std::cerr << "p11ha: " << OneLine(stop.message) << "\n";
      return stop.code;
    }
  };
}

}  // namespace p11ha::cli
