// SPDX-License-Identifier: Apache-2.0
// Object search (PKCS#11 2.40 §5.7): from p11ha's catalog while a listing of the members is
// fresh (catalog_listing.cpp), else one search on every serving member, merged by identity.
#include <algorithm>
#include <unordered_set>

#include "provider/core/error.h"
#include "provider/core/module.h"

namespace p11ha {

CK_RV Module::SearchMember(VirtualSession& session, Member& member, std::span<CK_ATTRIBUTE> match, Route& route,
                           std::vector<CK_OBJECT_HANDLE>& found) {
  route = Route{&member, CK_INVALID_HANDLE};
  CK_RV rv = session.MemberSession(member, &route.session);
  if (rv == CKR_OK)
    rv = member.Call("C_FindObjectsInit", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsInit, route.session,
                     match.data(), CK_ULONG{match.size()});
  if (rv != CKR_OK) return rv;
  CK_OBJECT_HANDLE batch[256];
  for (;;) {
    CK_ULONG n = 0;
    rv = member.Call("C_FindObjects", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjects, route.session, batch,
                     CK_ULONG{std::size(batch)}, &n);
    if (rv != CKR_OK || n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  CK_RV final_rv =
      member.Call("C_FindObjectsFinal", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjectsFinal, route.session);
  return rv == CKR_OK ? final_rv : rv;
}

Module::Adoption Module::AdoptFound(const Route& route, CK_OBJECT_HANDLE member_handle, CK_OBJECT_HANDLE& adopted) {
  try {
    adopted = Adopt(route, member_handle, CK_INVALID_HANDLE);
    return Adoption::kAdopted;
  } catch (const CkError& e) {
    // Destroyed by another process between the search and the read.
    if (e.rv() == CKR_OBJECT_HANDLE_INVALID) return Adoption::kGone;
    // The member failed while its objects were read (Adopt took it down): the other members
    // hold the same objects, so the search goes on without it.
    if (e.rv() == CKR_DEVICE_ERROR || e.rv() == kStaleRoute) return Adoption::kMemberFailed;
    throw;
  }
}

CK_RV Module::FindObjectsInit(CK_SESSION_HANDLE handle, CK_ATTRIBUTE_PTR attrs, CK_ULONG count) {
  auto session = SessionOrThrow(handle);
  if (attrs == nullptr && count > 0) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  if (session->op) return CKR_OPERATION_ACTIVE;
  monitor_.Tick();
  std::vector<std::size_t> serving = pool_.Serving();
  if (serving.empty()) return CKR_DEVICE_ERROR;
  std::span<CK_ATTRIBUTE> match(attrs, count);
  const std::optional<SearchTemplate> search = SearchTemplate::Parse(match);
  if (search) {
    if (auto answer = FindInCatalog(*session, serving, *search)) {
      session->op = FindOp{std::move(*answer)};
      return CKR_OK;
    }
  }

  const bool names_changeable = search && search->NamesChangeable();
  FindOp find;
  std::unordered_set<CK_OBJECT_HANDLE> seen;
  bool answered = false;
  for (std::size_t index : serving) {
    Member& member = pool_.at(index);
    PinnedEpoch pin(&member, member.epoch());
    Route route{&member, CK_INVALID_HANDLE};
    std::vector<CK_OBJECT_HANDLE> found;
    CK_RV rv = SearchMember(*session, member, match, route, found);
    if (rv != CKR_OK) {
      if (IsDeviceClass(rv) || rv == kStaleRoute) {
        Outcome(member, "C_FindObjects", rv);
        continue;
      }
      // A verdict on the template (CKR_ATTRIBUTE_TYPE_INVALID, ...) is the application's answer.
      return rv;
    }
    bool failed = false;
    for (CK_OBJECT_HANDLE member_handle : found) {
      CK_OBJECT_HANDLE virtual_handle = CK_INVALID_HANDLE;
      Adoption adoption = AdoptFound(route, member_handle, virtual_handle);
      if (adoption == Adoption::kGone) continue;
      if (adoption == Adoption::kMemberFailed) {
        failed = true;
        break;
      }
      // p11ha's own objects (the domain key, tombstones) are never the application's.
      auto object = catalog_.Get(virtual_handle);
      if (!object || object->facts.hidden) continue;
      // The member matched it by this template, so its label and id are the template's.
      if (names_changeable) catalog_.ApplySearchKeys(virtual_handle, match);
      if (seen.insert(virtual_handle).second) find.results.push_back(virtual_handle);
    }
    if (!failed) answered = true;
  }
  if (!answered) return CKR_DEVICE_ERROR;
  session->op = std::move(find);
  return CKR_OK;
}

CK_RV Module::FindObjects(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count) {
  auto session = SessionOrThrow(handle);
  if (out == nullptr || count == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  auto* find = session->op ? std::get_if<FindOp>(&*session->op) : nullptr;
  if (find == nullptr) return CKR_OPERATION_NOT_INITIALIZED;
  CK_ULONG n = 0;
  while (n < max && find->next < find->results.size()) {
    CK_OBJECT_HANDLE candidate = find->results[find->next++];
    // An object destroyed since the search started is not handed out.
    if (catalog_.Get(candidate)) out[n++] = candidate;
  }
  *count = n;
  return CKR_OK;
}

CK_RV Module::FindObjectsFinal(CK_SESSION_HANDLE handle) {
  auto session = SessionOrThrow(handle);
  std::lock_guard lock(session->mutex());
  if (!session->op || !std::holds_alternative<FindOp>(*session->op)) return CKR_OPERATION_NOT_INITIALIZED;
  session->op.reset();
  return CKR_OK;
}

}  // namespace p11ha
