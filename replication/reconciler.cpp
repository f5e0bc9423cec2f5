// SPDX-License-Identifier: Apache-2.0
// Anti-entropy between members (DESIGN.md "Replication", "Hidden objects"). There is no
// coordinator: other processes may reconcile, create and destroy at the same moment, so every
// step re-reads what it is about to rely on and leaves anything it cannot prove to the next run.
// The missing copies are in reconciler_copies.cpp.
#include "replication/reconciler.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "replication/attributes.h"
#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/reconcile_pass.h"
#include "replication/tombstone.h"

namespace p11ha::replication {
namespace reconcile_pass {

std::string Reconciler::RvText(CK_RV rv) const {
  if (options_.rv_name) return options_.rv_name(rv);
  char text[24];
  std::snprintf(text, sizeof text, "0x%08lX", static_cast<unsigned long>(rv));
  return text;
}

bool Reconciler::Writable(const MemberState& member) const {
  return !options_.rejoining || IndexOf(member) == *options_.rejoining;
}

void Reconciler::Add(MemberState& member, DriftEntry entry) {
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

std::string Reconciler::Destroy(MemberState& member, CK_OBJECT_HANDLE handle) {
  CK_RV rv = member.token().DestroyObject(handle);
  return rv == CKR_OK || Gone(rv) ? std::string() : "C_DestroyObject: " + RvText(rv);
}

std::vector<MemberState*> Reconciler::Holders(const std::string& identity) {
  std::vector<MemberState*> holders;
  for (MemberState& member : states_)
    if (member.Holds(identity)) holders.push_back(&member);
  return holders;
}

std::vector<std::string> Reconciler::Identities() const {
  std::set<std::string> all;
  for (const MemberState& member : states_)
    for (const auto& [identity, copies] : member.objects)
      if (!copies.empty()) all.insert(identity);
  return {all.begin(), all.end()};
}

bool Reconciler::Settled(const std::string& identity) const {
  return tombstoned_.contains(identity) || conflicted_.contains(identity);
}

void Reconciler::Scan(MemberState& member) {
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

bool Reconciler::ScanObject(MemberState& member, CK_OBJECT_HANDLE handle) {
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

bool Reconciler::ScanTombstone(MemberState& member, CK_OBJECT_HANDLE handle) {
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

void Reconciler::ReportMissingDomainKeys() {
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

void Reconciler::RemoveOrphans() {
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

bool Reconciler::Matches(const OrphanName& name, const ObjectSummary& summary) {
  return (!name.object_class || *name.object_class == summary.object_class) &&
         (!name.label || *name.label == summary.label) && (!name.id || *name.id == summary.id);
}

void Reconciler::RemoveNamedOrphans() {
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

bool Reconciler::DestroyCopies(MemberState& member, const std::string& identity, DriftKind kind, const char* why) {
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

void Reconciler::ApplyTombstones() {
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

bool Reconciler::DestroyTombstoned(const std::string& identity) {
  bool still_held = false;
  for (MemberState& member : states_)
    if (DestroyCopies(member, identity, DriftKind::kDeleted, "a tombstone says it was deleted")) still_held = true;
  return still_held;
}

void Reconciler::RetireTombstones(const std::string& identity) {
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

void Reconciler::SpreadTombstone(const std::string& identity) {
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

void Reconciler::FindConflicts() {
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

void Reconciler::RepairAttributes() {
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

std::string Reconciler::Rename(MemberState& member, std::vector<Copy>& copies,
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

void Reconciler::RemoveDuplicates() {
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

std::vector<MemberState*> Reconciler::OtherHolders(MemberState& member, const std::string& identity) {
  std::vector<MemberState*> others;
  for (MemberState& other : states_)
    if (&other != &member && (other.Holds(identity) || planned_holders_[identity].contains(&other)))
      others.push_back(&other);
  return others;
}

std::string Reconciler::Deduplicate(MemberState& member, const std::string& identity,
                                    const std::vector<MemberState*>& others, std::string& detail) {
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

void Reconciler::ReportLocal() {
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

}  // namespace reconcile_pass

ReconcileReport Reconcile(std::span<ReconcileMember> members, const ReconcileOptions& options) {
  return reconcile_pass::Reconciler(members, options).Run();
}

}  // namespace p11ha::replication
