// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <boost/thread/shared_mutex.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

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

struct ObjectView {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;  // p11ha's own
  ObjectFacts facts;
  CK_SESSION_HANDLE owner = CK_INVALID_HANDLE;  // the virtual session of a session object
  std::vector<MemberHandle> holders;

  std::optional<CK_OBJECT_HANDLE> HandleOn(std::size_t member, std::uint64_t epoch) const;
  std::uint64_t HolderMask(const std::vector<std::uint64_t>& epochs) const;
};

// Virtual object handle → identity → per-member handles. Handles come from a process-wide
// counter and are never reused in a process, not even across C_Finalize and C_Initialize. Lookups copy out a view, so no pointer into the catalog outlives its lock.
class ObjectCatalog {
 public:
  std::optional<ObjectView> Get(CK_OBJECT_HANDLE handle) const;

  // The virtual handle already mapped to this member handle, if any.
  std::optional<CK_OBJECT_HANDLE> Lookup(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE handle) const;

  // Maps a member handle to a virtual object, merging it into an object of the same identity
  // that this member does not hold yet (a copy on another member), else a new one.
  CK_OBJECT_HANDLE Register(const MemberHandle& where, const ObjectFacts& facts, CK_SESSION_HANDLE owner);

  // True when some known token object was held by `member` in an epoch before `epoch`.
  bool HeldBefore(std::size_t member, std::uint64_t epoch) const;

  // Records a copy that replication made of a known object on another member.
  void AddHolder(CK_OBJECT_HANDLE handle, const MemberHandle& where);

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
    std::vector<MemberHandle> holders;
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

  mutable boost::shared_mutex mu_;
  std::unordered_map<CK_OBJECT_HANDLE, Entry> entries_;
  std::unordered_map<MemberKey, CK_OBJECT_HANDLE, MemberKeyHash> by_member_;
  std::unordered_multimap<std::string, CK_OBJECT_HANDLE> by_identity_;
};

}  // namespace p11ha
