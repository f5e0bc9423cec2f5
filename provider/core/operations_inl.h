// SPDX-License-Identifier: Apache-2.0
// The body of every Update/Final-style call; included by module.h because it is a template.
#pragma once

#include <mutex>

namespace p11ha {

template <typename Call, typename OnSuccess>
CK_RV Module::OpStep(CK_SESSION_HANDLE handle, OpKind kind, bool finishing, const void* output, Call&& call,
                     OnSuccess&& on_success) {
  auto session = SessionOrThrow(handle);
  std::lock_guard lock(session->mutex());
  auto* op = session->op ? std::get_if<CryptoOp>(&*session->op) : nullptr;
  if (op == nullptr || op->kind != kind) return CKR_OPERATION_NOT_INITIALIZED;
  Member& member = pool_.at(op->member);
  if (member.epoch() != op->epoch) {
    session->op.reset();
    return CKR_DEVICE_ERROR;
  }
  CK_RV rv = call(member, op->member_session);
  // PKCS#11 §5.2: the operation goes on after CKR_BUFFER_TOO_SMALL and after a successful
  // length query; members answer CKR_ARGUMENTS_BAD before touching the operation.
  bool goes_on = rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ARGUMENTS_BAD ||
                 (rv == CKR_OK && (!finishing || output == nullptr));
  if (!goes_on) {
    session->op.reset();
    if (rv != CKR_OK) session->DiscardMemberSession(member);
  } else if (rv == CKR_OK) {
    on_success(*op);
  }
  return Outcome(member, "operation step", rv);
}

}  // namespace p11ha
