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
  session->op = CryptoOp{kind,        route.member->index(), route.member->epoch(), route.session, std::move(in_flight),
                         mechanism->mechanism};
  return CKR_OK;
}

CK_RV Module::DigestKey(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE key) {
  auto object = catalog_.Get(key);
  MoveFreshDigestToHolder(handle, object);
  // An unknown key ends the digest, as on the member.
  return OpStep(handle, OpKind::kDigest, false, nullptr, [&](Member& member, CK_SESSION_HANDLE session) {
    auto member_key = object ? object->HandleOn(member.index(), member.epoch()) : std::nullopt;
    if (!member_key) return CKR_KEY_HANDLE_INVALID;
    return member.Call("C_DigestKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestKey, session, *member_key);
  });
}

void Module::MoveFreshDigestToHolder(CK_SESSION_HANDLE handle, const std::optional<ObjectView>& key) {
  if (!key) return;
  auto session = SessionOrThrow(handle);
  std::lock_guard lock(session->mutex());
  auto* op = session->op ? std::get_if<CryptoOp>(&*session->op) : nullptr;
  if (op == nullptr || op->kind != OpKind::kDigest || !op->replayable) return;
  Member& current = pool_.at(op->member);
  if (key->HandleOn(current.index(), current.epoch())) return;
  std::uint64_t holders = HolderMask(*key);
  if (pool_.Serving(holders).empty()) return;
  // Nothing was digested yet, so the digest can start again on a member that holds the key.
  Route route = RouteOrThrow(*session, holders);
  CK_MECHANISM mechanism{op->mechanism, nullptr, 0};
  if (route.member->Call("C_DigestInit", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestInit, route.session,
                         &mechanism) != CKR_OK)
    return;
  if (!op->input.empty() &&
      route.member->Call("C_DigestUpdate", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestUpdate, route.session,
                         op->input.data(), CK_ULONG{op->input.size()}) != CKR_OK) {
    session->DiscardMemberSession(*route.member);
    return;
  }
  session->DiscardMemberSession(current);
  CryptoOp moved{OpKind::kDigest, route.member->index(), route.member->epoch(), route.session,
                 InFlight(*route.member), mechanism.mechanism};
  moved.input = std::move(op->input);
  session->op = std::move(moved);
}

CK_RV Module::DigestUpdate(CK_SESSION_HANDLE handle, CK_BYTE_PTR data, CK_ULONG len) {
  return OpStep(
      handle, OpKind::kDigest, false, nullptr,
      [&](Member& member, CK_SESSION_HANDLE session) {
        return member.Call("C_DigestUpdate", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestUpdate, session, data,
                           len);
      },
      [&](CryptoOp& op) {
        if (!op.replayable) return;
        if (op.input.size() + len > CryptoOp::kMaxReplay) {
          op.replayable = false;
          op.input.clear();
          return;
        }
        op.input.insert(op.input.end(), data, data + len);
      });
}

}  // namespace p11ha
