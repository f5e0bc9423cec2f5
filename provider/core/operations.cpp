// SPDX-License-Identifier: Apache-2.0
// Starting an operation (PKCS#11 2.40 §5.8-5.13) on a member that holds its key, and moving
// it to another member when that one fails.
#include <algorithm>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"

namespace p11ha {
namespace {

// Only a signature's start is held back for its first step (InitMemory): it is what
// applications repeat most, one short operation after another.
bool StartCanWait(OpKind kind) { return kind == OpKind::kSign; }

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

// Feeds the replayed input to an operation that was just initialised. Encryption and
// decryption produce output the application already has; it is read into scratch and dropped.
CK_RV FeedAgain(Member& member, OpKind kind, CK_SESSION_HANDLE session, std::span<const CK_BYTE> input) {
  auto data = const_cast<CK_BYTE_PTR>(input.data());
  const CK_ULONG length = input.size();
  using F = CK_FUNCTION_LIST;
  const auto k = CallKind::kParallel;
  switch (kind) {
    case OpKind::kDigest:
      return member.Call("C_DigestUpdate", k, &F::C_DigestUpdate, session, data, length);
    case OpKind::kSign:
      return member.Call("C_SignUpdate", k, &F::C_SignUpdate, session, data, length);
    case OpKind::kVerify:
      return member.Call("C_VerifyUpdate", k, &F::C_VerifyUpdate, session, data, length);
    case OpKind::kEncrypt:
    case OpKind::kDecrypt: {
      std::vector<CK_BYTE> scratch(input.size() + 256);
      for (int attempt = 0; attempt < 2; ++attempt) {
        CK_ULONG out_length = scratch.size();
        CK_RV rv = kind == OpKind::kEncrypt
                       ? member.Call("C_EncryptUpdate", k, &F::C_EncryptUpdate, session, data, length,
                                     scratch.data(), &out_length)
                       : member.Call("C_DecryptUpdate", k, &F::C_DecryptUpdate, session, data, length,
                                     scratch.data(), &out_length);
        if (rv != CKR_BUFFER_TOO_SMALL) {
          std::fill(scratch.begin(), scratch.end(), CK_BYTE{0});
          return rv;
        }
        scratch.resize(out_length);
      }
      return CKR_BUFFER_TOO_SMALL;
    }
    case OpKind::kSignRecover:
    case OpKind::kVerifyRecover:
      break;  // single-part only: nothing is ever fed
  }
  return CKR_OK;
}

}  // namespace

CK_OBJECT_HANDLE Module::Held(const ObjectPlaces& object, const Route& route) {
  return object.HandleOn(route.member->index(), route.member->epoch()).value_or(CK_INVALID_HANDLE);
}

CK_RV Module::OpInit(CK_SESSION_HANDLE handle, OpKind kind, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  if (session->op) return CKR_OPERATION_ACTIVE;

  std::optional<ObjectPlaces> key_object;
  std::uint64_t allowed = ~std::uint64_t{0};
  if (kind != OpKind::kDigest) {
    key_object = PlacesOrThrow(key, CKR_KEY_HANDLE_INVALID);
    allowed = HolderMask(*key_object);
  }
  std::optional<MechanismCopy> kept = MechanismCopy::Of(*mechanism);
  std::optional<CryptoOp> started;
  CK_RV rv = Failover(*session, allowed, "C_*Init", [&](const Route& route) {
    CK_OBJECT_HANDLE member_key = key_object ? Held(*key_object, route) : CK_INVALID_HANDLE;
    if (key_object && member_key == CK_INVALID_HANDLE) return kNotHere;
    InFlight in_flight(*route.member);
    const std::size_t index = route.member->index();
    const std::uint64_t epoch = route.member->epoch();
    const bool can_wait = StartCanWait(kind) && kept.has_value();
    if (can_wait && init_memory_.Accepted(index, epoch, member_key, *mechanism)) {
      started.emplace(CryptoOp{kind, index, epoch, route.session, std::move(in_flight)});
      started->start_pending = true;
      started->member_key = member_key;
      return CKR_OK;
    }
    CK_RV answer = CallInit(*route.member, kind, route.session, mechanism, member_key);
    if (answer == CKR_OK) {
      started.emplace(CryptoOp{kind, index, epoch, route.session, std::move(in_flight)});
      if (can_wait) init_memory_.Remember(index, epoch, member_key, *mechanism);
    }
    return answer;
  });
  if (rv != CKR_OK) return rv;
  started->key = key_object ? key : CK_INVALID_HANDLE;
  started->mechanism = std::move(kept);
  started->replayable = started->mechanism.has_value();
  session->op = std::move(*started);
  return CKR_OK;
}

CK_RV Module::MoveOperation(VirtualSession& session, CryptoOp& op) {
  if (!op.replayable) {
    log::Get()->warn("member {} failed during an operation that cannot move to another member ({}); the "
                     "application sees CKR_DEVICE_ERROR and its next operation goes to a working member",
                     pool_.at(op.member).name(),
                     op.mechanism ? "its input passed replay_limit_bytes or included a key"
                                  : "its mechanism parameter cannot be kept");
    return CKR_DEVICE_ERROR;
  }
  std::optional<ObjectView> key;
  std::uint64_t allowed = ~std::uint64_t{0};
  if (op.key != CK_INVALID_HANDLE) {
    key = catalog_.Get(op.key);
    if (!key) return CKR_KEY_HANDLE_INVALID;
    allowed = HolderMask(*key);
  }
  // The failed member is not asked again even if it is back already: its new instance does
  // not hold the operation, and another member is as good.
  allowed &= ~(std::uint64_t{1} << op.member);
  return Failover(session, allowed, "operation replay", [&](const Route& route) {
    CK_OBJECT_HANDLE member_key = key ? Held(*key, route) : CK_INVALID_HANDLE;
    if (key && member_key == CK_INVALID_HANDLE) return kNotHere;
    CK_RV rv = CallInit(*route.member, op.kind, route.session, op.mechanism->get(), member_key);
    if (rv == CKR_OK && !op.input.empty()) rv = FeedAgain(*route.member, op.kind, route.session, op.input.bytes());
    if (rv != CKR_OK) {
      if (!IsDeviceClass(rv)) session.DiscardMemberSession(*route.member);
      return rv;
    }
    log::Get()->info("operation moved from member {} to member {}", pool_.at(op.member).name(), route.member->name());
    op.start_pending = false;
    op.member = route.member->index();
    op.epoch = route.member->epoch();
    op.member_session = route.session;
    op.in_flight = InFlight(*route.member);
    return CKR_OK;
  });
}

std::optional<Member::PendingInit> Module::PendingStartOf(const CryptoOp& op) {
  if (!op.start_pending) return std::nullopt;
  // Only signatures wait (StartCanWait).
  return Member::PendingInit{&CK_FUNCTION_LIST::C_SignInit, op.mechanism->get(), op.member_key};
}

CK_RV Module::SendPendingStart(CryptoOp& op) {
  auto start = PendingStartOf(op);
  if (!start) return CKR_OK;
  op.start_pending = false;
  return CallInit(pool_.at(op.member), op.kind, op.member_session, start->mechanism, start->key);
}

CK_RV Module::DigestKey(CK_SESSION_HANDLE handle, CK_OBJECT_HANDLE key) {
  auto object = catalog_.Get(key);
  MoveFreshDigestToHolder(handle, object);
  // An unknown key ends the digest, as on the member.
  CK_RV rv = OpStep(handle, OpKind::kDigest, false, nullptr, {}, [&](Member& member, CK_SESSION_HANDLE session,
                                                                     const Member::PendingInit*) {  // digests never wait
    auto member_key = object ? object->HandleOn(member.index(), member.epoch()) : std::nullopt;
    if (!member_key) return CKR_KEY_HANDLE_INVALID;
    return member.Call("C_DigestKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_DigestKey, session, *member_key);
  });
  // A key's value is not input p11ha can keep and feed again.
  if (rv == CKR_OK) {
    auto session = SessionOrThrow(handle);
    std::lock_guard lock(session->mutex());
    if (auto* op = session->op ? std::get_if<CryptoOp>(&*session->op) : nullptr) {
      op->replayable = false;
      op->input.Clear();
    }
  }
  return rv;
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
  // The digest so far is kept input, so it can start again on a member that holds the key.
  const std::size_t from = op->member;
  CK_RV rv = Failover(*session, holders, "C_DigestKey", [&](const Route& route) {
    CK_RV answer = CallInit(*route.member, OpKind::kDigest, route.session, op->mechanism->get(), CK_INVALID_HANDLE);
    if (answer == CKR_OK && !op->input.empty())
      answer = FeedAgain(*route.member, OpKind::kDigest, route.session, op->input.bytes());
    if (answer != CKR_OK) return answer;
    op->member = route.member->index();
    op->epoch = route.member->epoch();
    op->member_session = route.session;
    op->in_flight = InFlight(*route.member);
    return CKR_OK;
  });
  if (rv == CKR_OK && op->member != from) session->DiscardMemberSession(pool_.at(from));
}

}  // namespace p11ha
