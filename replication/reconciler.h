// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "replication/object_identity.h"
#include "replication/token_session.h"

namespace p11ha::replication {

// One configured member as the reconciler sees it. The caller connects, logs in as the user and
// finds the domain key; the reconciler only reads and writes objects.
struct ReconcileMember {
  std::string name;
  // Logged in as the user (private objects must be visible); null when the member is down or
  // could not be logged in.
  TokenSession* token = nullptr;
  // The cluster's domain key on this member, or CK_INVALID_HANDLE when it has none: its keys are
  // then neither compared nor a source or target of copies (its other objects still are).
  CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
  // Holds another domain's key (a member of another cluster, or a botched ceremony): reported,
  // and nothing on it is read or written.
  bool foreign_domain = false;
  // Why the member is down, or which domain key it holds; shown in its report entry.
  std::string note;
};

struct ReconcileOptions {
  std::string domain_label = "p11ha-domain";  // config replication.domain_key_label
  bool dry_run = false;                        // report what would be done, change nothing
  // Whether the next copy's source may be read on a thread of its own while a target writes
  // the copy before it. False where the library may not create threads.
  bool overlap_copies = false;
  // Tombstones are removed only when this many members were all checked; 0 means the span's size.
  std::size_t configured_members = 0;
  // Hears each action taken or planned, one line, no secrets; may be empty.
  std::function<void(const std::string&)> log;
  // replication.non_extractable = "local": keys that cannot leave their member are expected and
  // are no drift. Otherwise such a key (made outside p11ha, say) lives on one member only, and
  // that is drift the operator must hear of, though no sync can repair it.
  bool local_keys_expected = false;
  // The index of a member coming back while the others serve (the rejoin inside the module).
  // The application's fan-out and deletions write the others as this runs, so a difference
  // between them may be an operation under way, not drift. Even an object the rejoining member
  // alone holds may be one the others have just deleted, and copying it back would revive a
  // deleted key. So only the rejoining member is written (copies to it, renames, duplicates);
  // tombstones still apply everywhere, and the rest is `p11ha sync`'s.
  std::optional<std::size_t> rejoining;
  // With `rejoining`: objects of failed creations that p11ha could not remove from the
  // rejoining member at the time (by identity). Each is destroyed there unless another member
  // holds it too, which would make it an object in use.
  std::set<std::string> orphans;
  // With `rejoining`: failed creations on the rejoining member that may have left an object p11ha
  // never saw. An object there that matches one by class, label and id, that no other member
  // holds and that could have been copied (a key that can live on one member only may be the
  // application's) is destroyed; when more objects match than the creations could have made,
  // none is touched.
  std::vector<OrphanName> orphan_names;
  // Asked before an object is copied to a member; false when another writer (the fan-out of a
  // new object) has taken that copy on, and this run must not make a second one. May be empty.
  std::function<bool(std::size_t member, const std::string& identity)> claim_copy;
  // Asked after an object was copied to a member; false when the application deleted it while
  // the copy was made, so the copy is destroyed again. May be empty.
  std::function<bool(std::size_t member, const std::string& identity)> keep_copy;
  // Names a CK_RV for messages (replication/ has no table of names); hex when empty.
  std::function<std::string(CK_RV)> rv_name;
};

enum class DriftKind {
  kMemberDown,        // down or not logged in: not checked at all ("unreachable")
  kForeignDomain,     // holds another domain's key: not checked
  kNoDomainKey,       // its keys were not compared
  kUnchecked,         // an object (or the whole scan) could not be read or fingerprinted
  kMissing,           // a copy other members hold is missing here
  kDeleted,           // a tombstone says the object was deleted; this member still holds it
  kTombstoneMissing,  // other members carry a tombstone this one lacks
  kTombstoneRetired,  // every member applied the deletion, so the tombstone goes (housekeeping)
  kDuplicate,         // the same object more than once on this member
  kConflict,          // same class, CKA_LABEL and CKA_ID as a different object elsewhere
  kAttributesDiffer,  // same object, but its CKA_LABEL or CKA_ID differ from the other copies
  kLocal,             // a key that can live on this member only (not drift)
  kOrphan,            // left by a failed creation on the rejoining member (ReconcileOptions::orphans)
};

// Stable lower-case names ("missing", "tombstone-missing", ...), for text and JSON output.
const char* DriftKindName(DriftKind kind);

enum class ActionState {
  kNone,     // nothing to do, or nothing the reconciler may do (a conflict, a member down)
  kPlanned,  // dry run: `action` would be done
  kDone,
  kFailed,   // `error` says why
};

const char* ActionStateName(ActionState state);

struct DriftEntry {
  DriftKind kind = DriftKind::kUnchecked;
  bool drift = true;     // needs repair or could not be checked; false for local objects and housekeeping
  std::string object;    // "certificate \"web\" id 01ab"; empty for whole-member entries
  std::string identity;  // ObjectSummary::identity (raw bytes); empty for whole-member entries
  std::string detail;    // what was found
  std::string action;    // what was done or would be done
  ActionState state = ActionState::kNone;
  std::string error;
  bool store_refused = false;  // the copy failed as CopyError::store_refused

  bool Unresolved() const { return drift && state != ActionState::kDone; }
};

struct MemberReconcileReport {
  std::string name;
  bool checked = false;     // its objects were listed
  std::size_t objects = 0;  // application objects found (p11ha's own are not counted)
  std::vector<DriftEntry> entries;
};

struct ReconcileReport {
  bool dry_run = false;
  std::vector<MemberReconcileReport> members;  // in the order given

  // True when anything needed repair or could not be checked.
  bool Drift() const;
  // True when drift is left that this run did not repair (always Drift() in a dry run).
  bool Unresolved() const;
};

// Compares the members by object identity (ObjectSummary::identity; never by label or id alone)
// and, unless options.dry_run, repairs what it safely can: destroys objects a tombstone names,
// spreads and retires tombstones, copies missing objects, repairs CKA_LABEL/CKA_ID from a
// majority and removes duplicate copies while another copy remains. Conflicts, local keys and
// members that cannot be checked are reported, never acted on. Every step tolerates another
// process doing the same at the same time. Throws only on resource exhaustion.
ReconcileReport Reconcile(std::span<ReconcileMember> members, const ReconcileOptions& options);

}  // namespace p11ha::replication
