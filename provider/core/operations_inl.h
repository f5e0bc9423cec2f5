// SPDX-License-Identifier: Apache-2.0
// The body of every Update/Final-style call; included by module.h because it is a template.
#pragma once

#include <mutex>
#include <optional>

#include "provider/core/error.h"
#include "provider/core/log.h"

namespace p11ha {

template <typename Call>
CK_RV Module::OpStep(CK_SESSION_HANDLE handle, OpKind kind, bool finishing, const void* output,
                     std::span<const CK_BYTE> fed, Call&& call) {
  auto session = SessionOrThrow(handle);
  std::lock_guard lock(session->mutex());
  auto* op = session->op ? std::get_if<CryptoOp>(&*session->op) : nullptr;
  if (op == nullptr || op->kind != kind) return CKR_OPERATION_NOT_INITIALIZED;
  for (std::size_t pass = 0;; ++pass) {
    Member& member = pool_.at(op->member);
    // The operation's member may have gone (and come back as a new instance) since the last step.
    bool current = member.epoch() == op->epoch && member.up();
    CK_RV rv = CKR_DEVICE_ERROR;
    if (current) {
      PinnedEpoch pin(&member, op->epoch);
      const std::optional<Member::PendingInit> start = PendingStartOf(*op);
      rv = call(member, op->member_session, start ? &*start : nullptr);
      if (rv == kStaleRoute) {
        current = false;
        rv = CKR_DEVICE_ERROR;
      } else if (start) {
        op->start_pending = false;
        if ((rv & Member::kInitRefused) != 0) {
          rv &= ~Member::kInitRefused;
          // Refused what it accepted before: the key or the login changed under p11ha (another
          // process). The application hears it from this step; a failed member is handled below.
          init_memory_.Forget();
          if (!IsDeviceClass(rv)) {
            log::Get()->info("member {} refused a signature start it had accepted before ({})", member.name(),
                             RvName(rv));
            session->op.reset();
            return rv;
          }
        }
      }
    }
    if (IsDeviceClass(rv) && pass <= pool_.size()) {
      if (current) Outcome(member, "operation step", rv);
      if (CK_RV moved = MoveOperation(*session, *op); moved != CKR_OK) {
        session->op.reset();
        return moved;
      }
      continue;  // the same step, on the member that took the operation over
    }
    // PKCS#11 §5.2: the operation goes on after CKR_BUFFER_TOO_SMALL and after a successful
    // length query; members answer CKR_ARGUMENTS_BAD before touching the operation.
    bool goes_on = rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ARGUMENTS_BAD ||
                   (rv == CKR_OK && (!finishing || output == nullptr));
    if (!goes_on) {
      session->op.reset();
      if (rv != CKR_OK) session->DiscardMemberSession(member);
      return IsDeviceClass(rv) ? CKR_DEVICE_ERROR : rv;
    }
    // The caller passes `fed` only for a step that consumes its input (not a length query).
    if (rv == CKR_OK && !finishing && !fed.empty() && op->replayable &&
        !op->input.Append(fed, config_.replay_limit_bytes)) {
      op->replayable = false;
      log::Get()->info("an operation's input passed replay_limit_bytes ({}); it can no longer move to another member",
                       config_.replay_limit_bytes);
    }
    return rv;
  }
}

}  // namespace p11ha
