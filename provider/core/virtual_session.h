// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <shared_mutex>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <variant>
#include <vector>

#include "provider/core/replay.h"
#include "provider/member/member_pool.h"

namespace p11ha {

enum class OpKind { kEncrypt, kDecrypt, kDigest, kSign, kVerify, kSignRecover, kVerifyRecover };

// An operation from Init to Final. It stays on the member that started it: the size query, the
// retry after CKR_BUFFER_TOO_SMALL and every Update go to the same member session. When that
// member fails, the operation starts again on another member from its copied mechanism and the
// input fed so far (DESIGN.md "Failure").
struct CryptoOp {
  OpKind kind;
  std::size_t member;
  std::uint64_t epoch;
  CK_SESSION_HANDLE member_session;
  InFlight in_flight;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;  // p11ha's handle; none for a digest
  std::optional<MechanismCopy> mechanism;  // none: the mechanism cannot be kept
  ReplayInput input;
  // False past replay_limit_bytes or after a step that cannot be repeated (C_DigestKey).
  bool replayable = true;
  // The member has not been sent the start yet: it goes with the first step (InitMemory).
  bool start_pending = false;
  CK_OBJECT_HANDLE member_key = CK_INVALID_HANDLE;  // the key's handle on `member`
};

// p11ha resolves a search completely at C_FindObjectsInit (as SoftHSM does), so no member
// operation stays open between C_FindObjects calls.
struct FindOp {
  std::vector<CK_OBJECT_HANDLE> results;
  std::size_t next = 0;
};

using ActiveOp = std::variant<CryptoOp, FindOp>;

// An application's session: p11ha's own handle, its flags, the member sessions opened for it
// (one per member, opened lazily, never shared with another virtual session) and its operation.
class VirtualSession {
 public:
  VirtualSession(CK_SESSION_HANDLE handle, CK_FLAGS flags) : handle_(handle), flags_(flags) {}

  CK_SESSION_HANDLE handle() const { return handle_; }
  CK_FLAGS flags() const { return flags_; }
  bool read_write() const { return (flags_ & CKF_RW_SESSION) != 0; }

  // Held by the thread using the session. PKCS#11 lets one thread use a session at a time; this
  // turns an application's mistake into waiting instead of a member crash (SoftHSM 2.6.1
  // crashes when two threads share one session).
  std::mutex& mutex() { return mu_; }

  std::optional<ActiveOp> op;  // guarded by mutex()

  // The member session for operations on `member` in its current epoch, opened on first use.
  CK_RV MemberSession(Member& member, CK_SESSION_HANDLE* out);
  // The member session that creates this session's objects. Session objects die with the
  // session that made them, so it is kept apart from the operations session, which p11ha may
  // replace at any time.
  CK_RV ObjectSession(Member& member, CK_SESSION_HANDLE* out);
  // Replaces the operations session on `member`: after an error p11ha cannot know whether the
  // member still holds the operation (SoftHSM keeps some, the spec ends them), so the next
  // operation starts on a fresh session instead of one in an unknown state.
  void DiscardMemberSession(Member& member);
  // Closes every member session (their session objects die with them, as the spec says).
  void CloseMemberSessions(MemberPool& pool);

 private:
  struct Opened {
    std::uint64_t epoch = 0;
    CK_SESSION_HANDLE work = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE objects = CK_INVALID_HANDLE;
  };
  CK_RV Open(Member& member, CK_SESSION_HANDLE* out);
  Opened& Slot(Member& member);
  const CK_SESSION_HANDLE handle_;
  const CK_FLAGS flags_;
  std::mutex mu_;
  std::map<std::size_t, Opened> member_sessions_;  // guarded by mu_
};

// Session handles come from a process-wide counter, so they never repeat in a process, not even
// across C_Finalize and C_Initialize: a stale handle must never name a new session.
class SessionTable {
 public:
  std::shared_ptr<VirtualSession> Open(CK_FLAGS flags);
  std::shared_ptr<VirtualSession> Get(CK_SESSION_HANDLE handle) const;
  std::shared_ptr<VirtualSession> Take(CK_SESSION_HANDLE handle);
  std::vector<std::shared_ptr<VirtualSession>> TakeAll();
  std::size_t Count() const;
  std::size_t ReadWriteCount() const;
  bool AnyReadOnly() const;

 private:
  mutable std::shared_mutex mu_;
  std::map<CK_SESSION_HANDLE, std::shared_ptr<VirtualSession>> sessions_;
};

}  // namespace p11ha
