// SPDX-License-Identifier: Apache-2.0
// One reconciliation pass (Reconcile(), reconciler.h), shared by the two files that define it:
// reconciler.cpp (scan, orphans, tombstones, conflicts, attributes, duplicates, local keys) and
// reconciler_copies.cpp (missing copies). Internal to replication/.
#pragma once

#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/reconciler.h"

namespace p11ha::replication::reconcile_pass {

// One copy of an object on one member, as found.
struct Copy {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  ObjectSummary summary;
};

struct MemberState {
  ReconcileMember* member = nullptr;
  MemberReconcileReport* report = nullptr;
  bool scanned = false;        // its token objects were listed
  bool keys_compared = false;  // it has the domain key, so its keys carry wrap fingerprints
  bool complete = false;       // scanned, keys compared, and every object read
  std::size_t uncompared_keys = 0;
  std::map<std::string, std::vector<Copy>> objects;  // identity -> copies here
  std::map<std::string, std::vector<CK_OBJECT_HANDLE>> tombstones;

  TokenSession& token() const { return *member->token; }
  const std::string& name() const { return member->name; }
  bool Holds(const std::string& identity) const {
    auto it = objects.find(identity);
    return it != objects.end() && !it->second.empty();
  }
  // Whether it can be compared on (and receive) this object: keys need the domain key.
  bool Takes(const ObjectSummary& summary) const {
    return scanned && (keys_compared || !IsKeyClass(summary.object_class));
  }
};

inline std::string Join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

inline bool Gone(CK_RV rv) { return rv == CKR_OBJECT_HANDLE_INVALID; }

class Reconciler {
 public:
  Reconciler(std::span<ReconcileMember> members, const ReconcileOptions& options) : options_(options) {
    report_.dry_run = options.dry_run;
    report_.members.resize(members.size());
    for (std::size_t i = 0; i < members.size(); ++i) {
      report_.members[i].name = members[i].name;
      MemberState state;
      state.member = &members[i];
      state.report = &report_.members[i];
      states_.push_back(std::move(state));
    }
    configured_ = std::max(options.configured_members, members.size());
  }

  ReconcileReport Run() {
    for (MemberState& member : states_) Scan(member);
    RemoveOrphans();
    RemoveNamedOrphans();
    ReportMissingDomainKeys();
    ApplyTombstones();
    FindConflicts();
    RepairAttributes();
    CopyMissing();
    RemoveDuplicates();
    ReportLocal();
    return std::move(report_);
  }

 private:
  std::string RvText(CK_RV rv) const;
  std::size_t IndexOf(const MemberState& member) const { return static_cast<std::size_t>(&member - states_.data()); }

  // Outside a rejoin every member is repaired; during one, see ReconcileOptions::rejoining.
  bool Writable(const MemberState& member) const;
  void Add(MemberState& member, DriftEntry entry);

  // Runs `act` unless this is a dry run, and records the outcome on the entry.
  template <typename Act>
  void Perform(DriftEntry& entry, Act&& act) {
    if (options_.dry_run) {
      entry.state = ActionState::kPlanned;
      return;
    }
    std::string error = act();
    entry.state = error.empty() ? ActionState::kDone : ActionState::kFailed;
    entry.error = std::move(error);
  }

  std::string Destroy(MemberState& member, CK_OBJECT_HANDLE handle);
  std::vector<MemberState*> Holders(const std::string& identity);
  std::vector<std::string> Identities() const;
  bool Settled(const std::string& identity) const;

  // ---- scan ----

  void Scan(MemberState& member);

  // Files one object; false when it could not be read or compared.
  bool ScanObject(MemberState& member, CK_OBJECT_HANDLE handle);
  bool ScanTombstone(MemberState& member, CK_OBJECT_HANDLE handle);

  // A member without the domain key is drift when keys exist that it cannot take part in.
  void ReportMissingDomainKeys();

  // ---- orphans of failed creations ----

  void RemoveOrphans();
  static bool Matches(const OrphanName& name, const ObjectSummary& summary);
  void RemoveNamedOrphans();

  // Destroys the member's copies of the object, each with a report entry; true when some copy
  // survived. The scan's record of the member follows, except in a dry run.
  bool DestroyCopies(MemberState& member, const std::string& identity, DriftKind kind, const char* why);

  // ---- tombstones ----

  void ApplyTombstones();

  // Destroys every copy of a deleted object; true when some copy survived.
  bool DestroyTombstoned(const std::string& identity);

  // Every configured member was checked and none holds the object: the tombstone has done its
  // work (DESIGN.md "Hidden objects").
  void RetireTombstones(const std::string& identity);

  // Until it can be retired, a tombstone lives on every member that can be reached, so that the
  // deletion survives whichever members come back first.
  void SpreadTombstone(const std::string& identity);

  // ---- conflicts ----

  // Same class, label and id but a different identity, on different member sets: two objects
  // an application would take for one. Which is right is the operator's call, not ours.
  void FindConflicts();

  // ---- attributes ----

  // A member that missed a C_SetAttributeValue holds the object with a stale CKA_LABEL or CKA_ID;
  // a strict majority of the holders says which is current.
  void RepairAttributes();
  std::string Rename(MemberState& member, std::vector<Copy>& copies,
                     const std::pair<std::string, std::vector<CK_BYTE>>& naming);

  // ---- missing copies ----

  // One missing object and the members that take a copy, decided on this thread in order.
  struct MissingCopy {
    std::string identity;
    ObjectSummary summary;
    std::vector<MemberState*> holders;
    std::vector<MemberState*> targets;
  };
  // A plan read from the first holder that still had the object (Plan()).
  struct SourcePlan {
    std::optional<std::pair<MemberState*, CopyPlan>> source;
    std::string why;
  };
  void CopyMissing();
  static bool Disjoint(const std::vector<MemberState*>& a, const std::vector<MemberState*>& b);
  std::optional<MissingCopy> NextMissing(const std::vector<std::string>& identities, std::size_t& at);
  void ReportUncopyable(const std::string& identity, const ObjectSummary& summary,
                        const std::vector<MemberState*>& holders, const std::vector<MemberState*>& targets,
                        const std::string& why);

  // The domain key unwraps only what its unwrap template allows: private, sensitive keys born
  // CKA_WRAP_WITH_TRUSTED (DESIGN.md "Replication"). Keys made outside p11ha often are not, and
  // no retry changes that, so they are reported rather than planned.
  std::string Uncopyable(MemberState& holder, const std::string& identity);

  // `planned` is the source's plan when it was read ahead; `holders_free` waits until no other
  // thread reads a holder any more, before this one touches them again.
  template <typename WaitForHolders>
  void CopyTo(const MissingCopy& missing, std::optional<SourcePlan> planned, const WaitForHolders& holders_free);
  static std::vector<std::string> Names(const std::vector<MemberState*>& members);
  SourcePlan PlanFrom(const std::string& identity, const std::vector<MemberState*>& holders);

  // Reads the object from the first holder that still has it; `why` stays empty when every
  // holder lost it since the scan. Touches nothing but the holders (CopyMissing reads ahead).
  std::optional<std::pair<MemberState*, CopyPlan>> Plan(const std::string& identity,
                                                        const std::vector<MemberState*>& holders, std::string& why);
  bool VanishedEverywhere(const std::string& identity, const ObjectSummary& summary,
                          const std::vector<MemberState*>& holders);

  // The object's copies on `member`, found afresh (handles from the scan may be stale); nullopt
  // when the search failed. Narrowed by class and label: SoftHSM pays for every object found.
  std::optional<std::vector<CK_OBJECT_HANDLE>> FindCopies(MemberState& member, const std::string& identity,
                                                          const ObjectSummary& like);

  // ---- duplicates ----

  // Extra copies go only while an identical copy stays: another member must hold the object,
  // and the kept copy is looked up again after each removal, because SoftHSM 2.6.1 can list one
  // object twice (research §9) and then "the duplicate" was the only copy on this member.
  void RemoveDuplicates();
  std::vector<MemberState*> OtherHolders(MemberState& member, const std::string& identity);
  std::string Deduplicate(MemberState& member, const std::string& identity, const std::vector<MemberState*>& others,
                          std::string& detail);

  // ---- local keys ----

  void ReportLocal();
  const ReconcileOptions& options_;
  ReconcileReport report_;
  std::vector<MemberState> states_;
  std::size_t configured_ = 0;
  std::set<std::string> tombstoned_;
  std::set<std::string> conflicted_;
  std::map<std::string, std::set<MemberState*>> planned_holders_;  // dry run: copies it would make
};

}  // namespace p11ha::replication::reconcile_pass
