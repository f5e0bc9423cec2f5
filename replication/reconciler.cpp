// SPDX-License-Identifier: Apache-2.0
// Anti-entropy between members (DESIGN.md "Replication", "Hidden objects"). There is no
// coordinator: other processes may reconcile, create and destroy at the same moment, so every
// step re-reads what it is about to rely on and leaves anything it cannot prove to the next run.
#include "replication/reconciler.h"

#include <algorithm>
#include <cstdio>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <system_error>
#include <tuple>
#include <utility>

#include "replication/attributes.h"
#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/tombstone.h"

namespace p11ha::replication {
namespace {

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
  bool Takes(const ObjectSummary& summary) const { return scanned && (keys_compared || !IsKeyClass(summary.object_class)); }
};

std::string Join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

bool Gone(CK_RV rv) { return rv == CKR_OBJECT_HANDLE_INVALID; }

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
  std::string RvText(CK_RV rv) const {
    if (options_.rv_name) return options_.rv_name(rv);
    char text[24];
    std::snprintf(text, sizeof text, "0x%08lX", static_cast<unsigned long>(rv));
    return text;
  }

  std::size_t IndexOf(const MemberState& member) const { return static_cast<std::size_t>(&member - states_.data()); }

  // Outside a rejoin every member is repaired; during one, see ReconcileOptions::rejoining.
  bool Writable(const MemberState& member) const {
    return !options_.rejoining || IndexOf(member) == *options_.rejoining;
  }

  void Add(MemberState& member, DriftEntry entry) {
    if (options_.log && (entry.drift || entry.state != ActionState::kNone)) {
      std::string line = member.name() + ": " + DriftKindName(entry.kind);
      if (!entry.object.empty()) line += " " + entry.object;
      if (!entry.detail.empty()) line += " (" + entry.detail + ")";
      if (entry.state != ActionState::kNone) line += ": " + entry.action;
      if (entry.state == ActionState::kPlanned) line += " (dry run)";
      if (entry.state == ActionState::kFailed) line += " failed";
      if (!entry.error.empty()) line += ": " + entry.error;
      options_.log(line);
    }
    member.report->entries.push_back(std::move(entry));
  }

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

  std::string Destroy(MemberState& member, CK_OBJECT_HANDLE handle) {
    CK_RV rv = member.token().DestroyObject(handle);
    return rv == CKR_OK || Gone(rv) ? std::string() : "C_DestroyObject: " + RvText(rv);
  }

  std::vector<MemberState*> Holders(const std::string& identity) {
    std::vector<MemberState*> holders;
    for (MemberState& member : states_)
      if (member.Holds(identity)) holders.push_back(&member);
    return holders;
  }

  std::vector<std::string> Identities() const {
    std::set<std::string> all;
    for (const MemberState& member : states_)
      for (const auto& [identity, copies] : member.objects)
        if (!copies.empty()) all.insert(identity);
    return {all.begin(), all.end()};
  }

  bool Settled(const std::string& identity) const {
    return tombstoned_.contains(identity) || conflicted_.contains(identity);
  }

  // ---- scan ----

  void Scan(MemberState& member) {
    ReconcileMember& config = *member.member;
    if (config.token == nullptr) {
      Add(member, {.kind = DriftKind::kMemberDown, .detail = config.note.empty() ? "down" : config.note});
      return;
    }
    if (config.foreign_domain) {
      Add(member, {.kind = DriftKind::kForeignDomain,
                   .detail = (config.note.empty() ? "holds another domain's key" : config.note) +
                             "; nothing on it is compared or copied"});
      return;
    }
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes}};
    std::vector<CK_OBJECT_HANDLE> handles;
    if (CK_RV rv = member.token().FindObjects(match, handles); rv != CKR_OK) {
      Add(member, {.kind = DriftKind::kUnchecked, .detail = "its objects could not be listed",
                   .error = "C_FindObjects: " + RvText(rv)});
      return;
    }
    member.scanned = true;
    member.report->checked = true;
    member.keys_compared = config.domain_key != CK_INVALID_HANDLE;
    std::sort(handles.begin(), handles.end());
    handles.erase(std::unique(handles.begin(), handles.end()), handles.end());
    bool all_read = true;
    for (CK_OBJECT_HANDLE handle : handles) all_read = ScanObject(member, handle) && all_read;
    member.complete = member.keys_compared && all_read;
  }

  // Files one object; false when it could not be read or compared.
  bool ScanObject(MemberState& member, CK_OBJECT_HANDLE handle) {
    ObjectSummary summary;
    CK_RV rv = ReadSummary(member.token(), handle, member.member->domain_key, options_.domain_label, summary);
    // Destroyed by another process since the find (the key wrap answers KEY_HANDLE_INVALID).
    if (Gone(rv) || rv == CKR_KEY_HANDLE_INVALID) return true;
    if (rv != CKR_OK) {
      Add(member, {.kind = DriftKind::kUnchecked, .object = "object handle " + std::to_string(handle),
                   .detail = "could not be read", .error = "C_GetAttributeValue: " + RvText(rv)});
      return false;
    }
    if (summary.kind == ObjectKind::kDomainKey) return true;
    if (summary.kind == ObjectKind::kTombstone) return ScanTombstone(member, handle);
    ++member.report->objects;
    if (IsKeyClass(summary.object_class) && !member.keys_compared) {
      ++member.uncompared_keys;
      return true;
    }
    if (IsKeyClass(summary.object_class) && !summary.by_wrap && !summary.unwrappable) {
      Add(member, {.kind = DriftKind::kUnchecked, .object = DescribeObject(summary), .identity = summary.identity,
                   .detail = "the key could not be wrapped under the domain key, so its copies cannot be compared"});
      return false;
    }
    member.objects[summary.identity].push_back({handle, std::move(summary)});
    return true;
  }

  bool ScanTombstone(MemberState& member, CK_OBJECT_HANDLE handle) {
    static constexpr CK_ATTRIBUTE_TYPE kValue[] = {CKA_VALUE};
    AttributeList value;
    CK_RV rv = ReadAttributes(member.token(), handle, kValue, value);
    if (Gone(rv)) return true;
    if (rv != CKR_OK) {
      Add(member, {.kind = DriftKind::kUnchecked, .object = "tombstone handle " + std::to_string(handle),
                   .detail = "could not be read", .error = "C_GetAttributeValue: " + RvText(rv)});
      return false;
    }
    // p11ha data objects of other kinds (none yet) are not tombstones: left alone.
    const Attribute* attribute = FindAttribute(value, CKA_VALUE);
    if (attribute == nullptr) return true;
    if (std::optional<std::string> identity = ParseTombstone(attribute->value))
      member.tombstones[*identity].push_back(handle);
    return true;
  }

  // A member without the domain key is drift when keys exist that it cannot take part in.
  void ReportMissingDomainKeys() {
    bool keys_elsewhere = false, domain_elsewhere = false;
    for (const MemberState& member : states_) {
      domain_elsewhere = domain_elsewhere || member.keys_compared;
      for (const auto& [identity, copies] : member.objects)
        keys_elsewhere = keys_elsewhere || (!copies.empty() && IsKeyClass(copies.front().summary.object_class));
    }
    for (MemberState& member : states_) {
      if (!member.scanned || member.keys_compared) continue;
      std::string detail = member.member->note.empty() ? "no domain key \"" + options_.domain_label + "\""
                                                       : member.member->note;
      detail += "; " + std::to_string(member.uncompared_keys) +
                " keys here not compared, and keys are never copied to or from it";
      Add(member, {.kind = DriftKind::kNoDomainKey,
                   .drift = member.uncompared_keys > 0 || keys_elsewhere || domain_elsewhere,
                   .detail = detail});
    }
  }

  // ---- orphans of failed creations ----

  void RemoveOrphans() {
    if (!options_.rejoining || options_.orphans.empty()) return;
    MemberState& member = states_.at(*options_.rejoining);
    for (const std::string& identity : options_.orphans) {
      auto it = member.objects.find(identity);
      if (it == member.objects.end() || it->second.empty()) continue;
      const bool elsewhere = std::any_of(states_.begin(), states_.end(), [&](const MemberState& other) {
        return &other != &member && other.Holds(identity);
      });
      if (elsewhere) continue;
      DestroyCopies(member, identity, DriftKind::kOrphan,
                    "made by a creation that failed, and the application holds another key");
    }
  }

  static bool Matches(const OrphanName& name, const ObjectSummary& summary) {
    return (!name.object_class || *name.object_class == summary.object_class) &&
           (!name.label || *name.label == summary.label) && (!name.id || *name.id == summary.id);
  }

  void RemoveNamedOrphans() {
    if (!options_.rejoining || options_.orphan_names.empty()) return;
    MemberState& member = states_.at(*options_.rejoining);
    std::map<OrphanName, std::size_t> asked;
    for (const OrphanName& name : options_.orphan_names)
      if (name.label || name.id) ++asked[name];
    for (const auto& [name, times] : asked) {
      // Counted by identity: each failed creation made one new key, and SoftHSM 2.6.1 can list
      // one object under two handles while others are created (#573).
      std::vector<std::string> candidates;
      for (const auto& [identity, held] : member.objects) {
        if (held.empty() || !Matches(name, held.front().summary) || held.front().summary.unwrappable) continue;
        const bool elsewhere = std::any_of(states_.begin(), states_.end(), [&](const MemberState& other) {
          return &other != &member && other.Holds(identity);
        });
        if (elsewhere) continue;
        candidates.push_back(identity);
      }
      if (candidates.empty()) continue;
      if (candidates.size() > times) {
        const ObjectSummary& summary = member.objects[candidates.front()].front().summary;
        Add(member, {.kind = DriftKind::kOrphan, .object = DescribeObject(summary), .identity = candidates.front(),
                     .detail = std::to_string(candidates.size()) + " objects alike that no other member holds, more than the "
                               "failed creations could have made; none is removed"});
        continue;
      }
      for (const std::string& identity : candidates)
        DestroyCopies(member, identity, DriftKind::kOrphan,
                      "made by a creation that failed before p11ha could read it (same class, label and id), and "
                      "no other member holds it");
    }
  }

  // Destroys the member's copies of the object, each with a report entry; true when some copy
  // survived. The scan's record of the member follows, except in a dry run.
  bool DestroyCopies(MemberState& member, const std::string& identity, DriftKind kind, const char* why) {
    auto it = member.objects.find(identity);
    if (it == member.objects.end()) return false;
    std::vector<Copy> kept;
    for (Copy& copy : it->second) {
      DriftEntry entry{.kind = kind, .object = DescribeObject(copy.summary), .identity = identity, .detail = why,
                       .action = "destroy it"};
      Perform(entry, [&] { return Destroy(member, copy.handle); });
      if (entry.state == ActionState::kFailed) kept.push_back(std::move(copy));
      Add(member, std::move(entry));
    }
    const bool survived = !kept.empty();
    if (options_.dry_run) return survived;
    if (kept.empty()) {
      member.objects.erase(it);
    } else {
      it->second = std::move(kept);
    }
    return survived;
  }

  // ---- tombstones ----

  void ApplyTombstones() {
    std::set<std::string> named;
    for (const MemberState& member : states_)
      for (const auto& [identity, handles] : member.tombstones) named.insert(identity);
    std::size_t complete = static_cast<std::size_t>(
        std::count_if(states_.begin(), states_.end(), [](const MemberState& m) { return m.complete; }));
    bool everyone_checked = complete == configured_;
    for (const std::string& identity : named) {
      tombstoned_.insert(identity);
      bool still_held = DestroyTombstoned(identity);
      if (everyone_checked && !still_held) {
        RetireTombstones(identity);
      } else {
        SpreadTombstone(identity);
      }
    }
  }

  // Destroys every copy of a deleted object; true when some copy survived.
  bool DestroyTombstoned(const std::string& identity) {
    bool still_held = false;
    for (MemberState& member : states_)
      if (DestroyCopies(member, identity, DriftKind::kDeleted, "a tombstone says it was deleted")) still_held = true;
    return still_held;
  }

  // Every configured member was checked and none holds the object: the tombstone has done its
  // work (DESIGN.md "Hidden objects").
  void RetireTombstones(const std::string& identity) {
    for (MemberState& member : states_) {
      auto it = member.tombstones.find(identity);
      if (it == member.tombstones.end()) continue;
      DriftEntry entry{.kind = DriftKind::kTombstoneRetired, .drift = false,
                       .object = "tombstone", .identity = identity,
                       .detail = "every member has applied the deletion", .action = "remove the tombstone"};
      Perform(entry, [&] {
        for (CK_OBJECT_HANDLE handle : it->second)
          if (std::string error = Destroy(member, handle); !error.empty()) return error;
        return std::string();
      });
      // A tombstone that stays is harmless; it is retried next time, but someone should know.
      entry.drift = entry.state == ActionState::kFailed;
      Add(member, std::move(entry));
    }
  }

  // Until it can be retired, a tombstone lives on every member that can be reached, so that the
  // deletion survives whichever members come back first.
  void SpreadTombstone(const std::string& identity) {
    for (MemberState& member : states_) {
      if (!member.scanned || member.tombstones.contains(identity)) continue;
      DriftEntry entry{.kind = DriftKind::kTombstoneMissing,
                       .object = "tombstone", .identity = identity,
                       .detail = "other members carry a tombstone for a deleted object",
                       .action = "create the tombstone"};
      Perform(entry, [&] {
        CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
        CK_RV rv = CreateTombstone(member.token(), identity, true, handle);
        return rv == CKR_OK ? std::string() : "C_CreateObject: " + RvText(rv);
      });
      Add(member, std::move(entry));
    }
  }

  // ---- conflicts ----

  // Same class, label and id but a different identity, on different member sets: two objects
  // an application would take for one. Which is right is the operator's call, not ours.
  void FindConflicts() {
    using Name = std::tuple<CK_OBJECT_CLASS, std::string, std::vector<CK_BYTE>>;
    std::map<Name, std::set<std::string>> by_name;
    for (const MemberState& member : states_)
      for (const auto& [identity, copies] : member.objects) {
        if (tombstoned_.contains(identity)) continue;
        for (const Copy& copy : copies) {
          const ObjectSummary& s = copy.summary;
          if (s.unwrappable || (s.label.empty() && s.id.empty())) continue;
          by_name[{s.object_class, s.label, s.id}].insert(identity);
        }
      }
    for (const auto& [name, identities] : by_name) {
      if (identities.size() < 2) continue;
      std::map<std::string, std::vector<std::string>> holders;
      for (const std::string& identity : identities)
        for (MemberState* member : Holders(identity)) holders[identity].push_back(member->name());
      bool same_members = std::all_of(holders.begin(), holders.end(),
                                      [&](const auto& h) { return h.second == holders.begin()->second; });
      if (same_members) continue;
      for (const std::string& identity : identities) {
        conflicted_.insert(identity);
        std::vector<std::string> others;
        for (const auto& [other, where] : holders)
          if (other != identity) others.push_back(IdentityHex(other).substr(0, 16) + " on " + Join(where));
        for (MemberState* member : Holders(identity)) {
          Add(*member, {.kind = DriftKind::kConflict, .object = DescribeObject(member->objects[identity].front().summary),
                        .identity = identity,
                        .detail = "a different object with the same class, label and id: " + Join(others) +
                                  "; neither is copied"});
        }
      }
    }
  }

  // ---- attributes ----

  // A member that missed a C_SetAttributeValue holds the object with a stale CKA_LABEL or CKA_ID;
  // a strict majority of the holders says which is current.
  void RepairAttributes() {
    for (const std::string& identity : Identities()) {
      if (Settled(identity)) continue;
      std::vector<MemberState*> holders = Holders(identity);
      if (holders.size() < 2 || holders.front()->objects[identity].front().summary.unwrappable) continue;
      using Naming = std::pair<std::string, std::vector<CK_BYTE>>;
      std::map<Naming, std::vector<std::string>> namings;
      for (MemberState* member : holders) {
        const ObjectSummary& s = member->objects[identity].front().summary;
        namings[{s.label, s.id}].push_back(member->name());
      }
      if (namings.size() < 2) continue;
      const Naming* majority = nullptr;
      for (const auto& [naming, where] : namings)
        if (2 * where.size() > holders.size()) majority = &naming;
      for (MemberState* member : holders) {
        std::vector<Copy>& copies = member->objects[identity];
        const ObjectSummary& s = copies.front().summary;
        if (!Writable(*member)) continue;
        if (majority != nullptr && s.label == majority->first && s.id == majority->second) continue;
        DriftEntry entry{.kind = DriftKind::kAttributesDiffer, .object = DescribeObject(s), .identity = identity};
        if (majority == nullptr) {
          entry.detail = "its copies differ in CKA_LABEL or CKA_ID and no majority says which is current";
          Add(*member, std::move(entry));
          continue;
        }
        entry.detail = "CKA_LABEL or CKA_ID differs from " + Join(namings[*majority]);
        entry.action = "set them as the majority has them";
        Perform(entry, [&] { return Rename(*member, copies, *majority); });
        Add(*member, std::move(entry));
      }
    }
  }

  std::string Rename(MemberState& member, std::vector<Copy>& copies,
                     const std::pair<std::string, std::vector<CK_BYTE>>& naming) {
    std::string label = naming.first;
    std::vector<CK_BYTE> id = naming.second;
    for (Copy& copy : copies) {
      std::vector<CK_ATTRIBUTE> changes;
      if (copy.summary.label != label)
        changes.push_back({CKA_LABEL, label.empty() ? nullptr : label.data(), label.size()});
      if (copy.summary.id != id) changes.push_back({CKA_ID, id.empty() ? nullptr : id.data(), id.size()});
      if (changes.empty()) continue;
      CK_RV rv = member.token().SetAttributeValue(copy.handle, changes);
      if (rv != CKR_OK) return "C_SetAttributeValue: " + RvText(rv);
      copy.summary.label = label;
      copy.summary.id = id;
    }
    return {};
  }

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

  void CopyMissing() {
    const std::vector<std::string> identities = Identities();
    std::size_t at = 0;
    std::optional<MissingCopy> current = NextMissing(identities, at);
    std::optional<SourcePlan> current_plan;
    while (current) {
      // Read before the next source's reads start: both may be on the same member.
      if (!current_plan && !options_.dry_run) current_plan = PlanFrom(current->identity, current->holders);
      std::optional<MissingCopy> next = NextMissing(identities, at);
      // The next source's reads and wrap run while this copy's targets write (SoftHSM writes
      // each object to disk): on separate members, so no session is used by two threads.
      std::future<SourcePlan> next_plan;
      if (next && options_.overlap_copies && !options_.dry_run && Disjoint(next->holders, current->targets)) {
        try {
          next_plan = std::async(std::launch::async, [this, &next] { return PlanFrom(next->identity, next->holders); });
        } catch (const std::system_error&) {
          // No thread to be had: the next plan is read in its turn.
        }
      }
      CopyTo(*current, std::move(current_plan), [&next_plan] {
        if (next_plan.valid()) next_plan.wait();
      });
      current_plan.reset();
      if (next_plan.valid()) current_plan = next_plan.get();
      current = std::move(next);
    }
  }

  static bool Disjoint(const std::vector<MemberState*>& a, const std::vector<MemberState*>& b) {
    return std::none_of(a.begin(), a.end(),
                        [&b](MemberState* member) { return std::find(b.begin(), b.end(), member) != b.end(); });
  }

  std::optional<MissingCopy> NextMissing(const std::vector<std::string>& identities, std::size_t& at) {
    while (at < identities.size()) {
      const std::string& identity = identities[at++];
      if (Settled(identity)) continue;
      std::vector<MemberState*> holders = Holders(identity);
      const ObjectSummary summary = holders.front()->objects[identity].front().summary;
      if (summary.unwrappable) continue;
      std::vector<MemberState*> targets;
      for (MemberState& member : states_) {
        if (!member.Takes(summary) || member.Holds(identity) || !Writable(member)) continue;
        if (options_.claim_copy && !options_.dry_run && !options_.claim_copy(IndexOf(member), identity)) continue;
        targets.push_back(&member);
      }
      if (targets.empty()) continue;
      // A dry run wraps nothing, so it reads what would refuse the copy; a copy learns it from
      // the plan's attributes (CopyTo), one member call less per key.
      if (options_.dry_run) {
        if (std::string why = Uncopyable(*holders.front(), identity); !why.empty()) {
          ReportUncopyable(identity, summary, holders, targets, why);
          continue;
        }
      }
      return MissingCopy{identity, summary, std::move(holders), std::move(targets)};
    }
    return std::nullopt;
  }

  void ReportUncopyable(const std::string& identity, const ObjectSummary& summary,
                        const std::vector<MemberState*>& holders, const std::vector<MemberState*>& targets,
                        const std::string& why) {
    for (MemberState* target : targets)
      Add(*target, {.kind = DriftKind::kMissing, .object = DescribeObject(summary), .identity = identity,
                    .detail = "held by " + Join(Names(holders)) + "; " + why});
  }

  // The domain key unwraps only what its unwrap template allows: private, sensitive keys born
  // CKA_WRAP_WITH_TRUSTED (DESIGN.md "Replication"). Keys made outside p11ha often are not, and
  // no retry changes that, so they are reported rather than planned.
  std::string Uncopyable(MemberState& holder, const std::string& identity) {
    const Copy& copy = holder.objects[identity].front();
    if (!IsKeyClass(copy.summary.object_class)) return {};
    AttributeList pinned;
    if (ReadAttributes(holder.token(), copy.handle, PinnedByUnwrapTemplate(), pinned) != CKR_OK) return {};
    return UncopyableBecause(pinned);
  }

  // `planned` is the source's plan when it was read ahead; `holders_free` waits until no other
  // thread reads a holder any more, before this one touches them again.
  template <typename WaitForHolders>
  void CopyTo(const MissingCopy& missing, std::optional<SourcePlan> planned, const WaitForHolders& holders_free) {
    const std::string& identity = missing.identity;
    const ObjectSummary& summary = missing.summary;
    const std::vector<MemberState*>& holders = missing.holders;
    const std::vector<MemberState*>& targets = missing.targets;
    std::vector<DriftEntry> entries(targets.size());
    for (DriftEntry& entry : entries) {
      entry = {.kind = DriftKind::kMissing, .object = DescribeObject(summary), .identity = identity,
               .detail = "held by " + Join(Names(holders)), .action = "copy it from " + holders.front()->name()};
    }
    if (options_.dry_run) {
      for (std::size_t i = 0; i < targets.size(); ++i) {
        entries[i].state = ActionState::kPlanned;
        planned_holders_[identity].insert(targets[i]);
        Add(*targets[i], std::move(entries[i]));
      }
      return;
    }
    if (!planned) planned = PlanFrom(identity, holders);
    std::string why = std::move(planned->why);
    std::optional<std::pair<MemberState*, CopyPlan>> source = std::move(planned->source);
    if (source && IsKeyClass(summary.object_class)) {
      if (std::string refused = UncopyableBecause(source->second.attributes); !refused.empty()) {
        ReportUncopyable(identity, summary, holders, targets, refused);
        return;
      }
    }
    std::vector<std::pair<MemberState*, CK_OBJECT_HANDLE>> made;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      DriftEntry& entry = entries[i];
      if (!source && why.empty()) {
        // Every holder lost it since the scan: deleted meanwhile, nothing to copy.
        entry.drift = false;
        entry.detail += "; deleted on every holder since";
        continue;
      }
      if (!source) {
        entry.state = ActionState::kFailed;
        entry.error = why;
        continue;
      }
      entry.action = "copy it from " + source->first->name();
      try {
        CK_OBJECT_HANDLE copy = ApplyCopy(source->second, targets[i]->token(), targets[i]->member->domain_key);
        if (options_.keep_copy && !options_.keep_copy(IndexOf(*targets[i]), identity)) {
          entry.detail += "; the application deleted it during the copy";
          if (std::string error = Destroy(*targets[i], copy); !error.empty()) {
            entry.state = ActionState::kFailed;
            entry.error = "the copy could not be removed again: " + error;
          } else {
            entry.drift = false;
            entry.action = "copy removed again";
          }
          continue;
        }
        made.emplace_back(targets[i], copy);
        entry.state = ActionState::kDone;
      } catch (const CopyError& e) {
        entry.state = ActionState::kFailed;
        entry.error = std::string(e.what()) + ", " + RvText(e.rv());
      }
    }
    holders_free();
    if (source && !made.empty() && VanishedEverywhere(identity, summary, holders)) {
      // Deleted while we copied (an application's C_DestroyObject reaches members one by one):
      // keeping the copies would bring the object back.
      for (auto& [member, handle] : made) Destroy(*member, handle);
      for (DriftEntry& entry : entries) {
        if (entry.state != ActionState::kDone) continue;
        entry.state = ActionState::kFailed;
        entry.error = "the object was deleted on every holder during the copy; the copy was removed again";
      }
      made.clear();
    }
    for (auto& [member, handle] : made) member->objects[identity].push_back({handle, summary});
    for (std::size_t i = 0; i < targets.size(); ++i) Add(*targets[i], std::move(entries[i]));
  }

  static std::vector<std::string> Names(const std::vector<MemberState*>& members) {
    std::vector<std::string> names;
    for (const MemberState* member : members) names.push_back(member->name());
    return names;
  }

  SourcePlan PlanFrom(const std::string& identity, const std::vector<MemberState*>& holders) {
    SourcePlan plan;
    plan.source = Plan(identity, holders, plan.why);
    return plan;
  }

  // Reads the object from the first holder that still has it; `why` stays empty when every
  // holder lost it since the scan. Touches nothing but the holders (CopyMissing reads ahead).
  std::optional<std::pair<MemberState*, CopyPlan>> Plan(const std::string& identity,
                                                        const std::vector<MemberState*>& holders, std::string& why) {
    for (MemberState* holder : holders) {
      if (!holder->Holds(identity)) continue;
      try {
        const Copy& copy = holder->objects.find(identity)->second.front();
        return std::make_pair(holder, PrepareCopy(holder->token(), copy.handle, holder->member->domain_key,
                                                  copy.summary.object_class));
      } catch (const CopyError& e) {
        if (!Gone(e.rv())) why = std::string(e.what()) + ", " + RvText(e.rv());
      }
    }
    return std::nullopt;
  }

  bool VanishedEverywhere(const std::string& identity, const ObjectSummary& summary,
                          const std::vector<MemberState*>& holders) {
    for (MemberState* holder : holders) {
      CK_OBJECT_CLASS object_class = 0;
      CK_ATTRIBUTE probe[] = {{CKA_CLASS, &object_class, sizeof object_class}};
      CK_RV rv = holder->token().GetAttributeValue(holder->objects[identity].front().handle, probe);
      if (!Gone(rv)) return false;
      // The handle is stale, but another process may have replaced the object (a duplicate's
      // removal): look again before concluding.
      std::optional<std::vector<CK_OBJECT_HANDLE>> found = FindCopies(*holder, identity, summary);
      if (!found || !found->empty()) return false;
    }
    return true;
  }

  // The object's copies on `member`, found afresh (handles from the scan may be stale); nullopt
  // when the search failed. Narrowed by class and label: SoftHSM pays for every object found.
  std::optional<std::vector<CK_OBJECT_HANDLE>> FindCopies(MemberState& member, const std::string& identity,
                                                          const ObjectSummary& like) {
    CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_CLASS object_class = like.object_class;
    std::string label = like.label;
    CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes},
                            {CKA_CLASS, &object_class, sizeof object_class},
                            {CKA_LABEL, label.empty() ? nullptr : label.data(), label.size()}};
    std::vector<CK_OBJECT_HANDLE> handles;
    if (member.token().FindObjects(match, handles) != CKR_OK) return std::nullopt;
    std::sort(handles.begin(), handles.end());
    handles.erase(std::unique(handles.begin(), handles.end()), handles.end());
    std::vector<CK_OBJECT_HANDLE> same;
    for (CK_OBJECT_HANDLE handle : handles) {
      ObjectSummary summary;
      CK_RV rv = ReadSummary(member.token(), handle, member.member->domain_key, options_.domain_label, summary);
      if (rv == CKR_OK && summary.identity == identity) same.push_back(handle);
    }
    return same;
  }

  // ---- duplicates ----

  // Extra copies go only while an identical copy stays: another member must hold the object,
  // and the kept copy is looked up again after each removal, because SoftHSM 2.6.1 can list one
  // object twice (research §9) and then "the duplicate" was the only copy on this member.
  void RemoveDuplicates() {
    for (MemberState& member : states_) {
      if (!Writable(member)) continue;
      for (auto& [identity, copies] : member.objects) {
        if (copies.size() < 2 || Settled(identity) || copies.front().summary.unwrappable) continue;
        DriftEntry entry{.kind = DriftKind::kDuplicate, .object = DescribeObject(copies.front().summary),
                         .identity = identity,
                         .detail = std::to_string(copies.size()) + " copies on this member",
                         .action = "remove " + std::to_string(copies.size() - 1) + " extra copies"};
        std::vector<MemberState*> others = OtherHolders(member, identity);
        if (others.empty()) {
          entry.action.clear();
          entry.detail += "; not removed, because no other member holds the object";
        } else {
          Perform(entry, [&] { return Deduplicate(member, identity, others, entry.detail); });
        }
        Add(member, std::move(entry));
      }
    }
  }

  std::vector<MemberState*> OtherHolders(MemberState& member, const std::string& identity) {
    std::vector<MemberState*> others;
    for (MemberState& other : states_)
      if (&other != &member && (other.Holds(identity) || planned_holders_[identity].contains(&other)))
        others.push_back(&other);
    return others;
  }

  std::string Deduplicate(MemberState& member, const std::string& identity, const std::vector<MemberState*>& others,
                          std::string& detail) {
    std::vector<Copy>& copies = member.objects[identity];
    const ObjectSummary summary = copies.front().summary;
    std::vector<CK_OBJECT_HANDLE> present;
    for (const Copy& copy : copies) present.push_back(copy.handle);
    // One removal at a time, then a fresh look: what is left is the truth, not the scan. Bounded,
    // because another process may be adding copies meanwhile.
    for (std::size_t round = 0; present.size() > 1 && round < copies.size(); ++round) {
      if (std::string error = Destroy(member, present.back()); !error.empty()) return error;
      std::optional<std::vector<CK_OBJECT_HANDLE>> left = FindCopies(member, identity, summary);
      if (!left) return "the kept copy could not be looked up again after a removal";
      present = std::move(*left);
    }
    copies.clear();
    for (CK_OBJECT_HANDLE handle : present) copies.push_back({handle, summary});
    if (present.size() > 1)
      return std::to_string(present.size()) + " copies remain (another process may be copying it meanwhile)";
    if (!present.empty()) return {};
    // The "extra" was the kept copy listed twice: put the object back from another member.
    std::string why;
    std::optional<std::pair<MemberState*, CopyPlan>> source = Plan(identity, others, why);
    if (!source) return "the object was listed twice and its removal took the only copy here; no copy back: " + why;
    try {
      copies.push_back({ApplyCopy(source->second, member.token(), member.member->domain_key), summary});
    } catch (const CopyError& e) {
      return "the object was listed twice and its removal took the only copy here; copying it back from " +
             source->first->name() + " failed: " + e.what() + ", " + RvText(e.rv());
    }
    detail += "; they were one object listed twice, so removing the extra took it: copied back from " +
              source->first->name();
    return {};
  }

  // ---- local keys ----

  void ReportLocal() {
    for (MemberState& member : states_)
      for (const auto& [identity, copies] : member.objects)
        if (!copies.empty() && copies.front().summary.unwrappable && !tombstoned_.contains(identity))
          Add(member, {.kind = DriftKind::kLocal, .drift = !options_.local_keys_expected,
                       .object = DescribeObject(copies.front().summary), .identity = identity,
                       .detail = options_.local_keys_expected
                                     ? "a key that cannot leave this member: not extractable, or not wrappable here"
                                     : "a key that cannot leave this member (not extractable, not private, not "
                                       "sensitive, not CKA_WRAP_WITH_TRUSTED, or not wrappable here), and "
                                       "replication.non_extractable is not \"local\": it lives on one member only"});
  }

  const ReconcileOptions& options_;
  ReconcileReport report_;
  std::vector<MemberState> states_;
  std::size_t configured_ = 0;
  std::set<std::string> tombstoned_;
  std::set<std::string> conflicted_;
  std::map<std::string, std::set<MemberState*>> planned_holders_;  // dry run: copies it would make
};

}  // namespace

ReconcileReport Reconcile(std::span<ReconcileMember> members, const ReconcileOptions& options) {
  return Reconciler(members, options).Run();
}

}  // namespace p11ha::replication
