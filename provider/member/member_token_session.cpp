// SPDX-License-Identifier: Apache-2.0
#include "provider/member/member_token_session.h"

#include <memory>
#include <span>
#include <vector>

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

namespace {

// What the unwrap-and-rewrap call shares with its caller (Member::CallWithState): the blob and
// the template are copied in, so that a call abandoned after the call timeout never reads the
// caller's frame, and the results are read out only once the call finished.
struct UnwrapRewrapJob : CallState {
  CK_MECHANISM mechanism{};
  std::vector<CK_BYTE> blob;
  std::vector<std::vector<CK_BYTE>> values;
  std::vector<CK_ATTRIBUTE> attributes;  // pointing into `values`
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_RV rewrap_rv = CKR_GENERAL_ERROR;
  std::vector<CK_BYTE> rewrapped;
};

std::shared_ptr<UnwrapRewrapJob> UnwrapRewrapJobOf(CK_MECHANISM_TYPE mechanism, std::span<const CK_BYTE> wrapped,
                                                  std::span<const CK_ATTRIBUTE> attributes) {
  auto job = std::make_shared<UnwrapRewrapJob>();
  job->mechanism = CK_MECHANISM{mechanism, nullptr, 0};
  job->blob.assign(wrapped.begin(), wrapped.end());
  job->values.reserve(attributes.size());  // the template points into them: no reallocation
  for (const CK_ATTRIBUTE& attribute : attributes) {
    const auto* bytes = static_cast<const CK_BYTE*>(attribute.pValue);
    auto& value = job->values.emplace_back(bytes, bytes == nullptr ? bytes : bytes + attribute.ulValueLen);
    job->attributes.push_back(
        CK_ATTRIBUTE{attribute.type, bytes == nullptr ? nullptr : value.data(), CK_ULONG{value.size()}});
  }
  // A faithful copy wraps to as many bytes as the blob it came from; a longer one differs.
  job->rewrapped.resize(wrapped.size());
  return job;
}

}  // namespace

CK_RV MemberTokenSession::UnwrapAndRewrap(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key,
                                          std::span<const CK_BYTE> wrapped, std::span<CK_ATTRIBUTE> attributes,
                                          CK_OBJECT_HANDLE& key, CK_RV& rewrap_rv, std::vector<CK_BYTE>& rewrapped) {
  auto job = UnwrapRewrapJobOf(mechanism, wrapped, attributes);
  PinnedEpoch pin(&member_, epoch_);
  const CK_RV rv = member_.CallWithState(
      "C_UnwrapKey", CallKind::kStore, job,
      [session = session_, unwrapping_key](const CK_FUNCTION_LIST& f, UnwrapRewrapJob& state) {
        if (f.C_UnwrapKey == nullptr || f.C_WrapKey == nullptr) return CK_RV{CKR_FUNCTION_NOT_SUPPORTED};
        const CK_RV unwrapped =
            f.C_UnwrapKey(session, &state.mechanism, unwrapping_key, state.blob.data(), CK_ULONG{state.blob.size()},
                          state.attributes.data(), CK_ULONG{state.attributes.size()}, &state.key);
        if (unwrapped != CKR_OK) return unwrapped;
        CK_ULONG size = state.rewrapped.size();
        state.rewrap_rv =
            f.C_WrapKey(session, &state.mechanism, unwrapping_key, state.key, state.rewrapped.data(), &size);
        state.rewrapped.resize(state.rewrap_rv == CKR_OK ? size : 0);
        return unwrapped;
      });
  if (rv != CKR_OK || !job->Finished()) return rv == CKR_OK ? CKR_GENERAL_ERROR : rv;
  key = job->key;
  rewrap_rv = job->rewrap_rv;
  rewrapped = std::move(job->rewrapped);
  // Longer than its blob: read whole, to be told apart from the blob by its length.
  if (rewrap_rv == CKR_BUFFER_TOO_SMALL) rewrap_rv = WrapKey(mechanism, unwrapping_key, key, rewrapped);
  return rv;
}

}  // namespace p11ha
