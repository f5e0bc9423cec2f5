// SPDX-License-Identifier: Apache-2.0
// Starting an operation (PKCS#11 2.40 §5.8-5.13): chosen member, held until the operation ends.
#include "provider/core/error.h"
#include "provider/core/module.h"

namespace p11ha {
namespace {

CK_RV CallInit(Member& member, OpKind kind, CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
               CK_OBJECT_HANDLE key) {
  const auto k = CallKind::kParallel;
  using F = CK_FUNCTION_LIST;
  switch (kind) {
    case OpKind::kEncrypt:
      return member.Call("C_EncryptInit", k, &F::C_EncryptInit, session, mechanism, key);
    case OpKind::kDecrypt:
      return member.Call("C_DecryptInit", k, &F::C_DecryptInit, session, mechanism, key);
    case OpKind::kDigest:
      return member.Call("C_DigestInit", k, &F::C_DigestInit, session, mechanism);
    case OpKind::kSign:
      return member.Call("C_SignInit", k, &F::C_SignInit, session, mechanism, key);
    case OpKind::kVerify:
      return member.Call("C_VerifyInit", k, &F::C_VerifyInit, session, mechanism, key);
    case OpKind::kSignRecover:
      return member.Call("C_SignRecoverInit", k, &F::C_SignRecoverInit, session, mechanism, key);
    case OpKind::kVerifyRecover:
      return member.Call("C_VerifyRecoverInit", k, &F::C_VerifyRecoverInit, session, mechanism, key);
  }
  return CKR_GENERAL_ERROR;
}

}  // namespace

CK_RV Module::OpInit(CK_SESSION_HANDLE handle, OpKind kind, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  if (session->op) return CKR_OPERATION_ACTIVE;

  std::optional<ObjectView> key_object;
  std::uint64_t allowed = ~std::uint64_t{0};
  if (kind != OpKind::kDigest) {
    key_object = ObjectOrThrow(key, CKR_KEY_HANDLE_INVALID);
    allowed = HolderMask(*key_object);
  }
  Route route = RouteOrThrow(*session, allowed);
  CK_OBJECT_HANDLE member_key =
      key_object ? MemberObject(*key_object, route, CKR_KEY_HANDLE_INVALID) : CK_INVALID_HANDLE;
  InFlight in_flight(*route.member);
  CK_RV rv = CallInit(*route.member, kind, route.session, mechanism, member_key);
  if (rv != CKR_OK) return Outcome(*route.member, "C_*Init", rv);
  session->op = CryptoOp{kind, route.member->index(), route.member->epoch(), route.session, std::move(in_flight)};
  return CKR_OK;
}

CK_RV Module::DigestKey(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE key) {
  ObjectView object = ObjectOrThrow(key, CKR_KEY_HANDLE_INVALID);
  return OpStep(handle, OpKind::kDigest, false, nullptr, [&](Member& member, CK_SESSION_HANDLE session) {
    auto member_key = object.HandleOn(member.index(), member.epoch());
    if (!member_key) return CKR_KEY_HANDLE_INVALID;
    return member.Call("C_DigestKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestKey, session, *member_key);
  });
}

}  // namespace p11ha
