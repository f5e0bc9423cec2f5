// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>

#include "provider/core/secure_bytes.h"

namespace p11ha {

// Who is logged in to the virtual token, and the PIN that logs in members that join later.
// The PIN lives in locked memory and is wiped at logout, at the last session's close and at
// C_Finalize. A login in progress is a state, not a held lock: member calls happen outside.
class LoginState {
 public:
  enum class Who { kPublic, kUser, kSecurityOfficer };

  Who who() const;
  // Bumped at every login and logout; a member that refused the PIN is not retried within one.
  std::uint64_t generation() const;

  // Claims the right to log in; returns the CK_RV that refuses it, or CKR_OK.
  CK_RV Begin(CK_USER_TYPE user, bool read_only_sessions_exist);
  void Commit(CK_USER_TYPE user, SecureBytes pin);
  void Abort();
  // Forgets the login and wipes the PIN; returns who was logged in.
  Who Clear();

  // After C_SetPIN by the logged-in user: members that join later need the new PIN.
  void ReplacePin(SecureBytes pin);

  // A copy of the PIN, for logging in a member that came up, with its user type.
  std::optional<std::pair<CK_USER_TYPE, SecureBytes>> Credentials() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable done_;
  bool in_progress_ = false;
  Who who_ = Who::kPublic;
  std::uint64_t generation_ = 0;
  SecureBytes pin_;
};

}  // namespace p11ha
