// SPDX-License-Identifier: Apache-2.0
// Session management and login (PKCS#11 2.40 §5.6).
#include <chrono>
#include <thread>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"

namespace p11ha {

CK_SESSION_HANDLE Module::OpenSession(CK_SLOT_ID slot, CK_FLAGS flags) {
  CheckSlot(slot);
  if (!(flags & CKF_SERIAL_SESSION)) ThrowCk(CKR_SESSION_PARALLEL_NOT_SUPPORTED, "sessions must be serial");
  if (!(flags & CKF_RW_SESSION) && login_.who() == LoginState::Who::kSecurityOfficer)
    ThrowCk(CKR_SESSION_READ_WRITE_SO_EXISTS, "the SO is logged in");
  return sessions_.Open(flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION))->handle();
}

void Module::CloseSession(CK_SESSION_HANDLE handle) {
  auto session = sessions_.Take(handle);
  if (!session) ThrowCk(CKR_SESSION_HANDLE_INVALID, "no such session");
  {
    std::lock_guard lock(session->mutex());
    session->op.reset();
    session->CloseMemberSessions(pool_);
  }
  catalog_.DropOwnedBy(handle);
  // Closing the application's last session ends its login, as on any token.
  if (sessions_.Count() == 0 && login_.Clear() != LoginState::Who::kPublic) LogoutMembers();
}

void Module::CloseAllSessions(CK_SLOT_ID slot) {
  CheckSlot(slot);
  for (auto& session : sessions_.TakeAll()) {
    {
      std::lock_guard lock(session->mutex());
      session->op.reset();
      session->CloseMemberSessions(pool_);
    }
    catalog_.DropOwnedBy(session->handle());
  }
  if (login_.Clear() != LoginState::Who::kPublic) LogoutMembers();
}

void Module::GetSessionInfo(CK_SESSION_HANDLE handle, CK_SESSION_INFO* info) {
  auto session = SessionOrThrow(handle);
  bool rw = session->read_write();
  info->slotID = config_.slot_id;
  info->flags = session->flags();
  info->ulDeviceError = 0;
  switch (login_.who()) {
    case LoginState::Who::kPublic:
      info->state = rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
      break;
    case LoginState::Who::kUser:
      info->state = rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
      break;
    case LoginState::Who::kSecurityOfficer:
      info->state = CKS_RW_SO_FUNCTIONS;
      break;
  }
}

CK_RV Module::Login(CK_SESSION_HANDLE handle, CK_USER_TYPE user, std::span<const CK_UTF8CHAR> pin) {
  auto session = SessionOrThrow(handle);
  if (user == CKU_CONTEXT_SPECIFIC) {
    // Re-authentication for a key with CKA_ALWAYS_AUTHENTICATE belongs to the operation.
    std::lock_guard lock(session->mutex());
    auto* op = session->op ? std::get_if<CryptoOp>(&*session->op) : nullptr;
    if (op == nullptr) return CKR_OPERATION_NOT_INITIALIZED;
    Member& member = pool_.at(op->member);
    if (CK_RV started = SendPendingStart(*op); started != CKR_OK) {
      session->op.reset();
      return Outcome(member, "C_SignInit", started);
    }
    CK_RV rv = member.Call("C_Login", CallKind::kStore, &CK_FUNCTION_LIST::C_Login, op->member_session, user,
                           const_cast<CK_UTF8CHAR_PTR>(pin.data()), CK_ULONG{pin.size()});
    return Outcome(member, "C_Login", rv);
  }
  if (user != CKU_USER && user != CKU_SO) return CKR_USER_TYPE_INVALID;
  monitor_.Tick();
  CK_RV rv = login_.Begin(user, sessions_.AnyReadOnly());
  if (rv != CKR_OK) return rv;

  SecureBytes secret(std::span<const std::uint8_t>(pin.data(), pin.size()));
  std::vector<Member*> logged_in;
  std::vector<std::pair<Member*, CK_RV>> lost;
  CK_RV refusal = CKR_OK;
  for (std::size_t i = 0; i < pool_.size() && refusal == CKR_OK; ++i) {
    Member& member = pool_.at(i);
    if (!member.up()) continue;
    CK_RV member_rv = member.Login(user, secret);
    // Every login rewrites SoftHSM's token file (research §9): another process's login can
    // make this one fail for a moment, or for good.
    for (int retry = 1; LoginNotAVerdict(member_rv) && retry <= 3; ++retry) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25 * retry));
      member_rv = member.Login(user, secret);
    }
    if (member_rv == CKR_OK) {
      logged_in.push_back(&member);
    } else if (IsDeviceClass(member_rv)) {
      Outcome(member, "C_Login", member_rv);
    } else if (LoginNotAVerdict(member_rv)) {
      lost.emplace_back(&member, member_rv);
    } else {
      // The first refusal is the answer; no other member sees a PIN it would count as wrong.
      refusal = member_rv;
    }
  }
  // Every member saying the same is the token's state (a user PIN never set), not a fault.
  if (refusal == CKR_OK && logged_in.empty()) refusal = lost.empty() ? CKR_DEVICE_ERROR : lost.front().second;
  if (refusal != CKR_OK) {
    for (Member* member : logged_in) member->Logout();
    login_.Abort();
    return refusal;
  }
  login_.Commit(user, std::move(secret));
  for (auto [member, answer] : lost) {
    // Others took the PIN: this one's token is what failed. Its reconnect logs it in with the
    // PIN just committed.
    log::Get()->error("member {}: C_Login still answered {} after retries while other members took the PIN; it is "
                      "taken down and reconnected",
                      member->name(), RvName(answer));
    member->MarkDown(std::string("C_Login answered ") + RvName(answer) + " where other members did not");
  }
  if (!lost.empty()) monitor_.Wake();
  if (user == CKU_USER) {
    for (std::size_t i = 0; i < pool_.size(); ++i) {
      Member& member = pool_.at(i);
      if (member.up() && awaiting_reconcile_[i].exchange(false, std::memory_order_acq_rel) && !ReconcileWith(member))
        awaiting_reconcile_[i].store(true, std::memory_order_release);
    }
  }
  return CKR_OK;
}

CK_RV Module::Logout(CK_SESSION_HANDLE handle) {
  SessionOrThrow(handle);
  // The spec's answer; SoftHSM 2.6.1 says CKR_OK (tests/conformance/DIVERGENCES.md).
  if (login_.Clear() == LoginState::Who::kPublic) return CKR_USER_NOT_LOGGED_IN;
  LogoutMembers();
  return CKR_OK;
}

}  // namespace p11ha
