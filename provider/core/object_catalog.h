// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <boost/container/small_vector.hpp>
#include <shared_mutex>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "provider/core/catalog_search.h"

namespace p11ha {

// What p11ha knows about an object independent of any member: its identity (see DESIGN.md
// "Object identity") and the facts that decide its handle's lifetime.
struct ObjectFacts {
  std::string identity;
  CK_OBJECT_CLASS object_class = CKO_DATA;
  bool token = false;
  bool is_private = false;
  // p11ha's own (the domain key, tombstones): never handed to applications.
  bool hidden = false;
  // A key that cannot leave its member (see replication::ObjectSummary::unwrappable).
  bool local = false;
};

// Where a member holds an object. The handle is meaningful only in the member's `epoch`.
struct MemberHandle {
  std::size_t member = 0;
  std::uint64_t epoch = 0;
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
};

// A cluster has a handful of members, so an object's holders fit inline: looking up a key for
// an operation, which happens at every C_*Init, then does not allocate.
using MemberHandles = boost::container::small_vector<MemberHandle, 4>;

// Where an object is held: all that routing a call on it needs.
struct ObjectPlaces {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;  // p11ha's own
  MemberHandles holders;

  std::optional<CK_OBJECT_HANDLE> HandleOn(std::size_t member, std::uint64_t epoch) const;
  std::uint64_t HolderMask(const std::vector<std::uint64_t>& epochs) const;
};

struct ObjectView : ObjectPlaces {
  ObjectFacts facts;
  CK_SESSION_HANDLE owner = CK_INVALID_HANDLE;  // the virtual session of a session object
};

// Virtual object handle → identity → per-member handles. Handles come from a process-wide
// counter and are never reused in a process, not even across C_Finalize and C_Initialize. Lookups copy out a view, so no pointer into the catalog outlives its lock.
class ObjectCatalog {
 public:
  std::optional<ObjectView> Get(CK_OBJECT_HANDLE handle) const;
  // Without the facts, whose identity string would be copied: none for an unknown object and
  // for p11ha's own (ObjectFacts::hidden).
  std::optional<ObjectPlaces> PlacesOfVisible(CK_OBJECT_HANDLE handle) const;

  // The virtual handle already mapped to this member handle, if any.
  std::optional<CK_OBJECT_HANDLE> Lookup(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE handle) const;

  // Maps a member handle to a virtual object, merging it into an object of the same identity
  // that this member does not hold yet (a copy on another member), else a new one. `keys`
  // replace the object's search keys: they are the latest read.
  CK_OBJECT_HANDLE Register(const MemberHandle& where, const ObjectFacts& facts, CK_SESSION_HANDLE owner,
                            SearchKeys keys);

  // True when some known token object was held by `member` in an epoch before `epoch`.
  bool HeldBefore(std::size_t member, std::uint64_t epoch) const;

  // Records a copy that replication made of a known object on another member.
  void AddHolder(CK_OBJECT_HANDLE handle, const MemberHandle& where);

  // What can change after creation (catalog_search.h): SetLabelAndId after a read,
  // ApplySearchKeys from a template that the members accepted (C_SetAttributeValue).
  // SetLabelAndId answers whether the object still matches `search`.
  bool SetLabelAndId(CK_OBJECT_HANDLE handle, const SearchKeys& read, const SearchTemplate& search);
  void ApplySearchKeys(CK_OBJECT_HANDLE handle, std::span<const CK_ATTRIBUTE> attributes);
  // The application's objects (not hidden) that `search` matches and that a serving member
  // (`serving`, a bitmask by index) holds in its current epoch (`epochs`), oldest first.
  std::vector<CK_OBJECT_HANDLE> Match(const SearchTemplate& search, const std::vector<std::uint64_t>& epochs,
                                      std::uint64_t serving) const;

  // Every holder records when it was added, in the catalog's own count, so that a listing can
  // tell holders added while it ran (kept) from holders it did not find (gone).
  std::uint64_t Stamp() const;
  // After a whole listing of `member` in `epoch` that began at `stamp` and returned `listed`:
  // holders on that member added before `stamp` and not listed were destroyed elsewhere (by
  // another process), so they go, and objects left without a holder go with them.
  void Prune(std::size_t member, std::uint64_t epoch, std::uint64_t stamp,
             const std::unordered_set<CK_OBJECT_HANDLE>& listed);

  void Remove(CK_OBJECT_HANDLE handle);
  void RemoveHolder(CK_OBJECT_HANDLE handle, std::size_t member);
  // Private objects' handles die at logout, as on the members (research/softhsm-2.6.1.md §7).
  void DropPrivate();
  // A session object dies with the session that created it.
  void DropOwnedBy(CK_SESSION_HANDLE owner);
  void Clear();

 private:
  struct Entry {
    ObjectFacts facts;
    CK_SESSION_HANDLE owner = CK_INVALID_HANDLE;
    MemberHandles holders;
    SearchKeys keys;
  };
  struct Holding {
    CK_OBJECT_HANDLE object;  // the virtual handle
    std::uint64_t stamp;      // when this holder was added
  };
  struct MemberKey {
    std::size_t member;
    std::uint64_t epoch;
    CK_OBJECT_HANDLE handle;
    bool operator==(const MemberKey&) const = default;
  };
  struct MemberKeyHash {
    std::size_t operator()(const MemberKey& k) const {
      return std::hash<std::uint64_t>()(k.handle * 1099511628211ULL ^ k.epoch << 8 ^ k.member);
    }
  };

  void EraseLocked(CK_OBJECT_HANDLE handle);
  void AddHoldingLocked(const MemberHandle& where, CK_OBJECT_HANDLE object);
  void RemoveHolderLocked(CK_OBJECT_HANDLE handle, std::size_t member);

  mutable std::shared_mutex mu_;
  std::unordered_map<CK_OBJECT_HANDLE, Entry> entries_;
  std::unordered_map<MemberKey, Holding, MemberKeyHash> by_member_;
  std::uint64_t stamp_ = 0;
  std::unordered_multimap<std::string, CK_OBJECT_HANDLE> by_identity_;
};

}  // namespace p11ha
