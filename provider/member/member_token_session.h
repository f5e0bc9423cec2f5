// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "provider/member/member.h"
#include "provider/member/token_calls.h"

namespace p11ha {

// replication::TokenSession over one connected member: a read/write session of its own, every
// call through Member::Call (serialisation of store changes, timing, quirks), pinned to the
// member instance the session came from (PinnedEpoch): once the member restarted, its calls
// answer kStaleRoute instead of reaching another session that got the same number.
class MemberTokenSession final : public TokenCalls<MemberTokenSession> {
 public:
  // Opens the session; throws CkError when the member is not connected or refuses it.
  explicit MemberTokenSession(Member& member);
  // Borrows a member session p11ha already holds (a virtual session's); it is not closed here.
  MemberTokenSession(Member& member, CK_SESSION_HANDLE borrowed);
  ~MemberTokenSession() override;
  MemberTokenSession(const MemberTokenSession&) = delete;
  MemberTokenSession& operator=(const MemberTokenSession&) = delete;

  const std::string& name() const override { return member_.name(); }
  CK_SESSION_HANDLE session() const { return session_; }
  // The member instance the session (and every handle it gave out) belongs to.
  std::uint64_t epoch() const { return epoch_; }
  CK_RV UnwrapAndRewrap(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                        std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key, CK_RV& rewrap_rv,
                        std::vector<CK_BYTE>& rewrapped) override;
  // Whether the session sees what the user's login protects. A member that restarted under
  // p11ha (its sessions and login gone, its handle numbers issued again) can hand out a new
  // session that is only public, and a scan of it would miss every private object.
  bool UserLoggedIn();

  template <typename Fn, typename... Args>
  CK_RV Call(const char* name, CallKind kind, Fn CK_FUNCTION_LIST::*field, Args... args) {
    PinnedEpoch pin(&member_, epoch_);
    return member_.Call(name, kind, field, args...);
  }

 private:
  Member& member_;
  const std::uint64_t epoch_;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  bool owned_ = true;
};

}  // namespace p11ha
