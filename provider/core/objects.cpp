// SPDX-License-Identifier: Apache-2.0
// Object management (PKCS#11 2.40 §5.7) over the members that hold each object.
#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "provider/member/token_calls.h"
#include "replication/object_identity.h"

namespace p11ha {
namespace {

bool BadTemplate(CK_ATTRIBUTE_PTR attrs, CK_ULONG count) { return attrs == nullptr && count > 0; }

}  // namespace

CK_RV Module::CreateObject(CK_SESSION_HANDLE handle, CK_ATTRIBUTE_PTR attrs, CK_ULONG count,
                           CK_OBJECT_HANDLE_PTR out) {
  auto session = SessionOrThrow(handle);
  if (BadTemplate(attrs, count) || out == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  std::span<const CK_ATTRIBUTE> requested(attrs, count);
  const bool token = replication::TemplateSaysToken(requested, false);
  CK_OBJECT_CLASS object_class = CKO_DATA;
  const bool key = replication::TemplateClass(requested, object_class) && replication::IsKeyClass(object_class);
  replication::Birth birth;
  if (key) {
    if (CK_RV rv = BirthOf(requested, token, replication::BirthCall::kCreate, "C_CreateObject", birth); rv != CKR_OK)
      return rv;
  } else {
    if (CK_RV rv = CheckReservedNames(requested); rv != CKR_OK) return rv;
    birth.attributes.assign(requested.begin(), requested.end());
  }
  const auto names = replication::NamesOfCreation(token, requested, std::nullopt);
  return Failover(
      *session, ~std::uint64_t{0}, "C_CreateObject",
      [&](const Route& route) {
        if (key && token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV rv = CheckKeyCreation(*route.member, "C_CreateObject"); rv != CKR_OK) return rv;
        auto create = [attrs = birth.attributes.data(), count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_CreateObject, on, attrs, count, &made[0]);
        };
        const CK_RV rv = Replicate(route, "C_CreateObject", create, birth.verdict, *session, {out, 1});
        return CreationFailed(route, rv, names);
      },
      Choice::kFirst, SessionUse::kObjects);
}

CK_RV Module::CopyObject(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs,
                         CK_ULONG count, CK_OBJECT_HANDLE_PTR out) {
  auto session = SessionOrThrow(handle);
  if (BadTemplate(attrs, count) || out == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView source = ObjectOrThrow(object, CKR_OBJECT_HANDLE_INVALID);
  std::span<const CK_ATTRIBUTE> requested(attrs, count);
  const bool token = replication::TemplateSaysToken(requested, source.facts.token);
  const bool key = replication::IsKeyClass(source.facts.object_class);
  replication::Birth birth;
  if (key) {
    if (CK_RV rv = BirthOf(requested, token, replication::BirthCall::kCopy, "C_CopyObject", birth); rv != CKR_OK)
      return rv;
  } else {
    if (CK_RV rv = CheckReservedNames(requested); rv != CKR_OK) return rv;
    birth.attributes.assign(requested.begin(), requested.end());
  }
  return Failover(
      *session, HolderMask(source), "C_CopyObject",
      [&](const Route& route) {
        CK_OBJECT_HANDLE member_source = Held(source, route);
        if (member_source == CK_INVALID_HANDLE) return kNotHere;
        if (key && token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV rv = CheckKeyCreation(*route.member, "C_CopyObject"); rv != CKR_OK) return rv;
        auto create = [member_source, attrs = birth.attributes.data(), count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_CopyObject, on, member_source, attrs, count, &made[0]);
        };
        return Replicate(route, "C_CopyObject", create, birth.verdict, *session, {out, 1});
      },
      Choice::kBalanced, SessionUse::kObjects);
}

CK_RV Module::DestroyObject(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE object) {
  auto session = SessionOrThrow(handle);
  std::lock_guard lock(session->mutex());
  ReplicationWrite write(*this);
  ObjectView target = ObjectOrThrow(object, CKR_OBJECT_HANDLE_INVALID);
  init_memory_.Forget();  // a member may give the handle to a new object
  std::uint64_t holders = HolderMask(target);
  std::vector<std::size_t> up_holders = UpHolders(holders);
  if (up_holders.empty()) return CKR_DEVICE_ERROR;
  bool first = true;
  std::vector<std::size_t> reached;
  for (std::size_t index : up_holders) {
    Member& member = pool_.at(index);
    PinnedEpoch pin(&member, member.epoch());
    Route route{&member, CK_INVALID_HANDLE};
    CK_RV rv = session->MemberSession(member, &route.session);
    if (rv == CKR_OK) {
      CK_OBJECT_HANDLE member_object = Held(target, route);
      rv = member_object == CK_INVALID_HANDLE
               ? CKR_OBJECT_HANDLE_INVALID
               : member.Call("C_DestroyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_DestroyObject, route.session,
                             member_object);
    }
    // Restarted since: its copy is found again by identity below (DestroyUnlistedCopies).
    if (rv == kStaleRoute) continue;
    if (IsDeviceClass(rv)) {
      // A member that fails here is down: the object stays there, and the tombstone below
      // makes it go when the member returns. The next member decides instead.
      Outcome(member, "C_DestroyObject", rv);
      continue;
    }
    // The first member decides (read-only session, CKA_DESTROYABLE=FALSE, ...); after that a
    // member that already lost the object is no reason to fail.
    if (rv != CKR_OK && (first || rv != CKR_OBJECT_HANDLE_INVALID)) {
      if (first) return rv;
      log::Get()->warn("C_DestroyObject: member {} kept the object: {}", member.name(), RvName(rv));
    }
    catalog_.RemoveHolder(object, index);
    if (rv == CKR_OK) reached.push_back(index);
    first = false;
  }
  if (first) return CKR_DEVICE_ERROR;  // every holder failed: nothing was destroyed
  catalog_.Remove(object);
  if (target.facts.token) NoteDeletion(target.facts.identity);
  DestroyUnlistedCopies(*session, target, reached);
  LeaveTombstones(*session, target, reached);
  return CKR_OK;
}

CK_RV Module::GetObjectSize(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE object, CK_ULONG_PTR size) {
  auto session = SessionOrThrow(handle);
  if (size == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView target = ObjectOrThrow(object, CKR_OBJECT_HANDLE_INVALID);
  return Failover(*session, HolderMask(target), "C_GetObjectSize", [&](const Route& route) {
    CK_OBJECT_HANDLE member_object = Held(target, route);
    if (member_object == CK_INVALID_HANDLE) return kNotHere;
    return route.member->Call("C_GetObjectSize", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetObjectSize,
                              route.session, member_object, size);
  });
}

CK_RV Module::GetAttributeValue(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs,
                                CK_ULONG count) {
  auto session = SessionOrThrow(handle);
  if (BadTemplate(attrs, count)) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView target = ObjectOrThrow(object, CKR_OBJECT_HANDLE_INVALID);
  // Copies differ from the original in provenance (CKA_LOCAL, CKA_ALWAYS_SENSITIVE: research
  // §5), so reads go to the first holder in priority order, not by balancing: an application
  // reads the same answer every time while that member is up, and always what a member holds.
  return Failover(
      *session, HolderMask(target), "C_GetAttributeValue",
      [&](const Route& route) {
        CK_OBJECT_HANDLE member_object = Held(target, route);
        if (member_object == CK_INVALID_HANDLE) return kNotHere;
        return route.member->Call("C_GetAttributeValue", CallKind::kParallel,
                                  &CK_FUNCTION_LIST::C_GetAttributeValue, route.session, member_object, attrs, count);
      },
      Choice::kFirst);
}

CK_RV Module::SetAttributeValue(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs,
                                CK_ULONG count) {
  auto session = SessionOrThrow(handle);
  if (BadTemplate(attrs, count)) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView target = ObjectOrThrow(object, CKR_OBJECT_HANDLE_INVALID);
  if (CK_RV rv = CheckReservedNames({attrs, count}); rv != CKR_OK) return rv;
  init_memory_.Forget();  // CKA_SIGN, for one, decides whether a start is accepted
  std::vector<std::size_t> holders = UpHolders(HolderMask(target));
  // The first member that answers decides; one that fails is down, and the reconciler repairs
  // its copy's attributes from the majority when it returns.
  const Member* decided = nullptr;
  for (std::size_t index : holders) {
    Member& member = pool_.at(index);
    PinnedEpoch pin(&member, member.epoch());
    Route route{&member, CK_INVALID_HANDLE};
    CK_RV rv = session->MemberSession(member, &route.session);
    if (rv == CKR_OK) {
      CK_OBJECT_HANDLE member_object = Held(target, route);
      if (member_object == CK_INVALID_HANDLE) continue;
      rv = member.Call("C_SetAttributeValue", CallKind::kStore, &CK_FUNCTION_LIST::C_SetAttributeValue,
                       route.session, member_object, attrs, count);
    }
    // Restarted since: like a member that failed here, it is repaired when reconciled.
    if (rv == kStaleRoute) continue;
    if (IsDeviceClass(rv)) {
      Outcome(member, "C_SetAttributeValue", rv);
      continue;
    }
    if (decided == nullptr) {
      if (rv != CKR_OK) return rv;
      decided = &member;
    } else if (rv != CKR_OK) {
      log::Get()->warn("C_SetAttributeValue: member {} refused what member {} accepted: {}", member.name(),
                       decided->name(), RvName(rv));
    }
  }
  if (decided == nullptr) return CKR_DEVICE_ERROR;
  catalog_.ApplySearchKeys(object, {attrs, count});
  return CKR_OK;
}

}  // namespace p11ha
