// SPDX-License-Identifier: Apache-2.0
// The reconciler's report types: names and the drift verdicts.
#include <algorithm>

#include "replication/reconciler.h"

namespace p11ha::replication {

const char* DriftKindName(DriftKind kind) {
  switch (kind) {
    case DriftKind::kMemberDown: return "unreachable";
    case DriftKind::kForeignDomain: return "foreign-domain";
    case DriftKind::kNoDomainKey: return "no-domain-key";
    case DriftKind::kUnchecked: return "unchecked";
    case DriftKind::kMissing: return "missing";
    case DriftKind::kDeleted: return "deleted";
    case DriftKind::kTombstoneMissing: return "tombstone-missing";
    case DriftKind::kTombstoneRetired: return "tombstone-retired";
    case DriftKind::kDuplicate: return "duplicate";
    case DriftKind::kConflict: return "conflict";
    case DriftKind::kAttributesDiffer: return "attributes-differ";
    case DriftKind::kLocal: return "local";
    case DriftKind::kOrphan: return "orphan";
  }
  return "?";
}

const char* ActionStateName(ActionState state) {
  switch (state) {
    case ActionState::kNone: return "none";
    case ActionState::kPlanned: return "planned";
    case ActionState::kDone: return "done";
    case ActionState::kFailed: return "failed";
  }
  return "?";
}

bool ReconcileReport::Drift() const {
  return std::any_of(members.begin(), members.end(), [](const MemberReconcileReport& member) {
    return std::any_of(member.entries.begin(), member.entries.end(), [](const DriftEntry& e) { return e.drift; });
  });
}

bool ReconcileReport::Unresolved() const {
  return std::any_of(members.begin(), members.end(), [](const MemberReconcileReport& member) {
    return std::any_of(member.entries.begin(), member.entries.end(),
                       [](const DriftEntry& e) { return e.Unresolved(); });
  });
}

}  // namespace p11ha::replication
