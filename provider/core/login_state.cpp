// SPDX-License-Identifier: Apache-2.0
#include "provider/core/login_state.h"

namespace p11ha {

LoginState::Who LoginState::who() const {
  std::lock_guard lock(mu_);
  return who_;
}

std::uint64_t LoginState::generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

CK_RV LoginState::Begin(CK_USER_TYPE user, bool read_only_sessions_exist) {
  std::unique_lock lock(mu_);
  done_.wait(lock, [&] { return !in_progress_; });
  if (who_ == Who::kUser)
    return user == CKU_USER ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
  if (who_ == Who::kSecurityOfficer)
    return user == CKU_SO ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
  if (user == CKU_SO && read_only_sessions_exist) return CKR_SESSION_READ_ONLY_EXISTS;
  in_progress_ = true;
  return CKR_OK;
}

void LoginState::Commit(CK_USER_TYPE user, SecureBytes pin) {
  {
    std::lock_guard lock(mu_);
    who_ = user == CKU_SO ? Who::kSecurityOfficer : Who::kUser;
    pin_ = std::move(pin);
    ++generation_;
    in_progress_ = false;
  }
  done_.notify_all();
}

void LoginState::Abort() {
  {
    std::lock_guard lock(mu_);
    in_progress_ = false;
  }
  done_.notify_all();
}

LoginState::Who LoginState::Clear() {
  std::lock_guard lock(mu_);
  Who was = who_;
  who_ = Who::kPublic;
  pin_.Clear();
  ++generation_;
  return was;
}

void LoginState::ReplacePin(SecureBytes pin) {
  std::lock_guard lock(mu_);
  if (who_ != Who::kPublic) pin_ = std::move(pin);
}

std::optional<std::pair<CK_USER_TYPE, SecureBytes>> LoginState::Credentials() const {
  std::lock_guard lock(mu_);
  if (who_ == Who::kPublic) return std::nullopt;
  return std::make_pair(who_ == Who::kUser ? CKU_USER : CKU_SO,
                        SecureBytes(std::span<const std::uint8_t>(pin_.data(), pin_.size())));
}

}  // namespace p11ha
