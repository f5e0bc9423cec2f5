// SPDX-License-Identifier: Apache-2.0
// Object search (PKCS#11 2.40 §5.7): one search on every serving member, merged by identity.
#include <algorithm>
#include <unordered_set>

#include "provider/core/error.h"
#include "provider/core/module.h"

namespace p11ha {

CK_RV Module::FindObjectsInit(CK_SESSION_HANDLE handle, CK_ATTRIBUTE_PTR attrs, CK_ULONG count) {
  auto session = SessionOrThrow(handle);
  if (attrs == nullptr && count > 0) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  if (session->op) return CKR_OPERATION_ACTIVE;
  monitor_.Tick();
  std::vector<std::size_t> serving = pool_.Serving();
  if (serving.empty()) return CKR_DEVICE_ERROR;

  FindOp find;
  std::unordered_set<CK_OBJECT_HANDLE> seen;
  std::vector<CK_OBJECT_HANDLE> batch(256);
  bool answered = false;
  CK_RV refusal = CKR_OK;
  for (std::size_t index : serving) {
    Member& member = pool_.at(index);
    PinnedEpoch pin(&member, member.epoch());
    Route route{&member, CK_INVALID_HANDLE};
    CK_RV rv = session->MemberSession(member, &route.session);
    if (rv == CKR_OK)
      rv = member.Call("C_FindObjectsInit", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsInit,
                       route.session, attrs, count);
    if (rv != CKR_OK) {
      if (IsDeviceClass(rv) || rv == kStaleRoute) {
        Outcome(member, "C_FindObjectsInit", rv);
        continue;
      }
      refusal = rv;
      break;
    }
    std::vector<CK_OBJECT_HANDLE> found;
    for (;;) {
      CK_ULONG n = 0;
      rv = member.Call("C_FindObjects", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjects, route.session,
                       batch.data(), CK_ULONG{batch.size()}, &n);
      if (rv != CKR_OK || n == 0) break;
      found.insert(found.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
    }
    CK_RV final_rv = member.Call("C_FindObjectsFinal", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjectsFinal,
                                 route.session);
    if (rv == CKR_OK) rv = final_rv;
    if (rv != CKR_OK) {
      Outcome(member, "C_FindObjects", rv);
      continue;
    }
    bool failed = false;
    for (CK_OBJECT_HANDLE member_handle : found) {
      CK_OBJECT_HANDLE virtual_handle = CK_INVALID_HANDLE;
      try {
        virtual_handle = Adopt(route, member_handle, CK_INVALID_HANDLE);
      } catch (const CkError& e) {
        // Destroyed by another process between the search and the read.
        if (e.rv() == CKR_OBJECT_HANDLE_INVALID) continue;
        // The member failed while its objects were read (Adopt took it down): the other
        // members hold the same objects, so the search goes on without it.
        if (e.rv() == CKR_DEVICE_ERROR || e.rv() == kStaleRoute) {
          failed = true;
          break;
        }
        throw;
      }
      // p11ha's own objects (the domain key, tombstones) are never the application's.
      auto object = catalog_.Get(virtual_handle);
      if (!object || object->facts.hidden) continue;
      if (seen.insert(virtual_handle).second) find.results.push_back(virtual_handle);
    }
    if (!failed) answered = true;
  }
  if (refusal != CKR_OK) return refusal;
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
