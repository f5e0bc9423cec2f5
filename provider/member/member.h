// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "config/config.h"
#include "provider/core/secure_bytes.h"
#include "provider/member/mechanisms.h"

namespace p11ha {

// How a member call is scheduled. SoftHSM 2.6.1 corrupts its object store when two threads
// change or search it at once (research/softhsm-2.6.1.md §9), so those calls are serialised
// per member token; crypto on separate sessions stays parallel.
enum class CallKind { kParallel, kStore };

enum class MemberState { kDown, kUp };

// True for answers that mean the member itself failed, not the request.
bool IsDeviceClass(CK_RV rv);

struct MemberStatus {
  std::string name;
  MemberState state = MemberState::kDown;
  bool standby = false;
  std::chrono::system_clock::time_point since;
  std::uint64_t failures = 0;
  std::string last_error;
  std::uint64_t epoch = 0;
};

// One member: a loaded module instance, the token it serves, and its health. Every outbound
// call goes through Call(), which applies the quirks, times the call and classifies the answer.
class Member {
 public:
  Member(std::size_t index, config::MemberConfig config);
  ~Member();
  Member(const Member&) = delete;
  Member& operator=(const Member&) = delete;

  std::size_t index() const { return index_; }
  const std::string& name() const { return config_.name; }
  const config::MemberConfig& config() const { return config_; }
  bool standby() const { return config_.standby; }

  // Loads the module (for a remote member, a p11-kit-client instance bound to its address).
  // Throws CkError when the module cannot be loaded: that is a configuration error.
  void Load();
  // Initialises the instance, selects the token by URI and opens the control session.
  // Returns false (with the reason recorded) when the token is not reachable. The member stays
  // down until Activate(), so that it is logged in (and later reconciled) before it serves.
  bool Connect();
  void Activate();
  // Finalises the instance; cached state tied to the old epoch becomes stale.
  void Disconnect();
  void Unload();

  bool up() const { return state_.load(std::memory_order_acquire) == MemberState::kUp; }
  // Changes whenever the member is (re)connected: member handles of an older epoch are void.
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  CK_SLOT_ID slot() const { return slot_; }
  CK_FUNCTION_LIST* functions() const { return functions_; }
  const MechanismTable& mechanisms() const { return mechanisms_; }
  const CK_TOKEN_INFO& token_info() const { return token_info_; }

  void MarkDown(const std::string& why);
  MemberStatus Status() const;

  // Logs the member's token in on the control session, which also covers every other session
  // of this instance. CKR_USER_ALREADY_LOGGED_IN counts as success.
  CK_RV Login(CK_USER_TYPE user, const SecureBytes& pin);
  CK_RV Logout();

  // Work currently routed to this member, for least-busy balancing.
  std::atomic<int> in_flight{0};

  template <typename Fn, typename... Args>
  CK_RV Call(const char* name, CallKind kind, Fn CK_FUNCTION_LIST::*field, Args... args) {
    Fn fn = functions_ == nullptr ? nullptr : functions_->*field;
    if (fn == nullptr) return CKR_FUNCTION_NOT_SUPPORTED;
    CallScope scope(*this, kind);
    CK_RV rv = fn(args...);
    scope.Finish(name, rv);
    return rv;
  }

 private:
  // Serialisation, SIGPIPE shielding and timing for one member call.
  class CallScope {
   public:
    CallScope(Member& member, CallKind kind);
    ~CallScope();
    void Finish(const char* name, CK_RV rv);

   private:
    Member& member_;
    std::unique_lock<std::mutex> store_lock_;
    std::chrono::steady_clock::time_point start_;
    bool pipe_shielded_ = false;
    bool had_pipe_pending_ = false;
    sigset_t old_mask_;
  };

  bool FindToken();
  void LoadMechanisms();
  void RecordFailure(const std::string& what);

  const std::size_t index_;
  const config::MemberConfig config_;

  CK_FUNCTION_LIST* functions_ = nullptr;
  bool initialized_ = false;
  CK_SLOT_ID slot_ = 0;
  CK_SESSION_HANDLE control_session_ = CK_INVALID_HANDLE;
  CK_TOKEN_INFO token_info_{};
  MechanismTable mechanisms_;

  std::atomic<MemberState> state_{MemberState::kDown};
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<std::uint64_t> failures_{0};

  std::mutex store_mu_;    // the per-token serialisation quirk; the only lock held across a call
  mutable std::mutex status_mu_;  // guards the fields below; never held across a call
  std::string last_error_;
  std::chrono::system_clock::time_point since_ = std::chrono::system_clock::now();
};

}  // namespace p11ha
