// SPDX-License-Identifier: Apache-2.0
#include "provider/member/member_token_session.h"

#include "provider/core/error.h"

namespace p11ha {

MemberTokenSession::MemberTokenSession(Member& member) : member_(member), epoch_(member.epoch()) {
  if (member.functions() == nullptr) ThrowCk(CKR_DEVICE_ERROR, "member " + member.name() + " is not loaded");
  CK_RV rv = Call("C_OpenSession", CallKind::kStore, &CK_FUNCTION_LIST::C_OpenSession, member.slot(),
                         CK_FLAGS{CKF_SERIAL_SESSION | CKF_RW_SESSION}, CK_VOID_PTR{nullptr}, CK_NOTIFY{nullptr},
                         &session_);
  if (rv != CKR_OK) ThrowCk(rv, "member " + member.name() + ": C_OpenSession failed: " + RvName(rv));
}

MemberTokenSession::MemberTokenSession(Member& member, CK_SESSION_HANDLE borrowed)
    : member_(member), epoch_(member.epoch()), session_(borrowed), owned_(false) {}

MemberTokenSession::~MemberTokenSession() {
  if (owned_) Call("C_CloseSession", CallKind::kStore, &CK_FUNCTION_LIST::C_CloseSession, session_);
}

bool MemberTokenSession::UserLoggedIn() {
  CK_SESSION_INFO info{};
  if (Call("C_GetSessionInfo", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetSessionInfo, session_, &info) != CKR_OK) return false;
  return info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS;
}

CK_RV MemberTokenSession::Login(CK_USER_TYPE user, const SecureBytes& pin) {
  return Call("C_Login", CallKind::kStore, &CK_FUNCTION_LIST::C_Login, session_, user,
                      const_cast<CK_UTF8CHAR_PTR>(pin.data()), CK_ULONG{pin.size()});
}

CK_RV MemberTokenSession::Logout() {
  return Call("C_Logout", CallKind::kStore, &CK_FUNCTION_LIST::C_Logout, session_);
}

CK_RV MemberTokenSession::CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) {
  return Call("C_CreateObject", CallKind::kStore, &CK_FUNCTION_LIST::C_CreateObject, session_,
                      attributes.data(), CK_ULONG{attributes.size()}, &object);
}

CK_RV MemberTokenSession::CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes,
                                     CK_OBJECT_HANDLE& copy) {
  return Call("C_CopyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_CopyObject, session_, source,
                      attributes.data(), CK_ULONG{attributes.size()}, &copy);
}

CK_RV MemberTokenSession::DestroyObject(CK_OBJECT_HANDLE object) {
  return Call("C_DestroyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_DestroyObject, session_, object);
}

CK_RV MemberTokenSession::FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) {
  found.clear();
  CK_RV rv = Call("C_FindObjectsInit", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsInit, session_,
                          match.data(), CK_ULONG{match.size()});
  if (rv != CKR_OK) return rv;
  CK_OBJECT_HANDLE batch[64];
  for (;;) {
    CK_ULONG n = 0;
    rv = Call("C_FindObjects", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjects, session_, batch,
                      CK_ULONG{std::size(batch)}, &n);
    if (rv != CKR_OK || n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  CK_RV final_rv =
      Call("C_FindObjectsFinal", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsFinal, session_);
  return rv != CKR_OK ? rv : final_rv;
}

CK_RV MemberTokenSession::GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) {
  return Call("C_GetAttributeValue", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetAttributeValue, session_,
                      object, attributes.data(), CK_ULONG{attributes.size()});
}

CK_RV MemberTokenSession::SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) {
  return Call("C_SetAttributeValue", CallKind::kStore, &CK_FUNCTION_LIST::C_SetAttributeValue, session_,
                      object, attributes.data(), CK_ULONG{attributes.size()});
}

CK_RV MemberTokenSession::UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key,
                                    std::span<const CK_BYTE> wrapped, std::span<CK_ATTRIBUTE> attributes,
                                    CK_OBJECT_HANDLE& key) {
  CK_MECHANISM m{mechanism, nullptr, 0};
  return Call("C_UnwrapKey", CallKind::kStore, &CK_FUNCTION_LIST::C_UnwrapKey, session_, &m, unwrapping_key,
                      const_cast<CK_BYTE_PTR>(wrapped.data()), CK_ULONG{wrapped.size()}, attributes.data(),
                      CK_ULONG{attributes.size()}, &key);
}

CK_RV MemberTokenSession::WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                                  std::vector<CK_BYTE>& wrapped) {
  CK_MECHANISM m{mechanism, nullptr, 0};
  auto wrap = [&](CK_BYTE_PTR into, CK_ULONG* size) {
    return Call("C_WrapKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_WrapKey, session_, &m, wrapping_key, key,
                into, size);
  };
  // Room for any key this side of RSA-8192 in PKCS#8: the blob comes back from one call, with
  // no size query first. Each member call is a hand-off to a worker, and a scan wraps every key.
  constexpr CK_ULONG kRoom = 8192;
  wrapped.resize(kRoom);
  CK_ULONG size = kRoom;
  CK_RV rv = wrap(wrapped.data(), &size);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    size = 0;
    if ((rv = wrap(nullptr, &size)) != CKR_OK) return rv;
    wrapped.resize(size);
    rv = wrap(wrapped.data(), &size);
  }
  wrapped.resize(rv == CKR_OK ? size : 0);
  return rv;
}

CK_RV MemberTokenSession::UnwrapAndRewrap(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key,
                                          std::span<const CK_BYTE> wrapped, std::span<CK_ATTRIBUTE> attributes,
                                          CK_OBJECT_HANDLE& key, CK_RV& rewrap_rv, std::vector<CK_BYTE>& rewrapped) {
  CK_MECHANISM m{mechanism, nullptr, 0};
  // A faithful copy wraps to as many bytes as the blob it came from; a longer one differs.
  rewrapped.resize(wrapped.size());
  CK_ULONG size = rewrapped.size();
  CK_RV wrap_rv = CKR_GENERAL_ERROR;
  PinnedEpoch pin(&member_, epoch_);
  const CK_RV rv = member_.CallTogether(
      "C_UnwrapKey", CallKind::kStore,
      [session = session_, mechanism = &m, unwrapping_key, blob = const_cast<CK_BYTE_PTR>(wrapped.data()),
       blob_size = CK_ULONG{wrapped.size()}, attributes = attributes.data(), count = CK_ULONG{attributes.size()},
       made = &key, out = rewrapped.data(), out_size = &size, out_rv = &wrap_rv](const CK_FUNCTION_LIST& f) {
        if (f.C_UnwrapKey == nullptr || f.C_WrapKey == nullptr) return CK_RV{CKR_FUNCTION_NOT_SUPPORTED};
        const CK_RV unwrapped =
            f.C_UnwrapKey(session, mechanism, unwrapping_key, blob, blob_size, attributes, count, made);
        if (unwrapped == CKR_OK) *out_rv = f.C_WrapKey(session, mechanism, unwrapping_key, *made, out, out_size);
        return unwrapped;
      });
  if (rv != CKR_OK) return rv;
  rewrap_rv = wrap_rv;
  if (rewrap_rv == CKR_BUFFER_TOO_SMALL) rewrap_rv = WrapKey(mechanism, unwrapping_key, key, rewrapped);
  else rewrapped.resize(rewrap_rv == CKR_OK ? size : 0);
  return rv;
}

}  // namespace p11ha
