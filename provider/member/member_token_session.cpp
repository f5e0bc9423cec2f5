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
