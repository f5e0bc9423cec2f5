// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "fault_spec.h"

namespace p11ha::test_member {

// Everything one copy of the test member knows. There is exactly one per loaded .so copy.
class Member {
 public:
  static Member& Instance();

  Member(const Member&) = delete;
  Member& operator=(const Member&) = delete;

  // How an injected answer came about, for the caller that may have to end an operation.
  struct Admission {
    // A `fail` rule answered, or a `stall` was released by a new spec: SoftHSM still holds the
    // session and its operation, which the caller ends as a real failure would.
    bool end_operation = false;
    // The SoftHSM instance the call arrived at; see ForwardOn.
    std::uint64_t instance = 0;
  };

  // Counts the call and applies the faults. Returns the CK_RV to give instead of forwarding,
  // or nullopt when the call goes on.
  std::optional<CK_RV> Admit(Fn fn, Admission* admission = nullptr);

  // Runs call(CK_FUNCTION_LIST*) on SoftHSM. Calls run in parallel; only C_Initialize,
  // C_Finalize and a restart exclude them.
  template <typename Call>
  CK_RV Forward(Call&& call) {
    std::shared_lock lock(call_mutex_);
    if (!initialized_) return CKR_CRYPTOKI_NOT_INITIALIZED;
    return call(functions_);
  }

  // Forward, but only while SoftHSM is still `instance`: after a restart or C_Finalize the
  // caller's session number may already name someone else's new session.
  template <typename Call>
  CK_RV ForwardOn(std::uint64_t instance, Call&& call) {
    std::shared_lock lock(call_mutex_);
    if (!initialized_ || instance_.load(std::memory_order_acquire) != instance) {
      return CKR_SESSION_HANDLE_INVALID;
    }
    return call(functions_);
  }

  // Forward, then a served_log line when a call that hands out a result said CKR_OK.
  template <typename Call>
  CK_RV ForwardServed(Fn fn, Call&& call) {
    std::shared_lock lock(call_mutex_);
    if (!initialized_) return CKR_CRYPTOKI_NOT_INITIALIZED;
    const CK_RV rv = call(functions_);
    if (rv == CKR_OK && !served_log_.empty() && HandsOutResult(fn)) LogServed(fn);
    return rv;
  }

  CK_RV Initialize(void* init_args);
  CK_RV Finalize(void* reserved);

  // Valid inside Forward.
  const std::optional<std::vector<CK_MECHANISM_TYPE>>& mechanisms() const { return mechanisms_; }

  int Count(std::string_view function) const;
  void ResetCounts();
  void SetFault(std::string_view spec);
  void DumpCounts() const;

 private:
  struct ActiveRule {
    FaultRule rule;
    unsigned long seen = 0;
    unsigned long fired = 0;
  };
  // dev, inode, size, mtime, ctime; all zero when the file is missing.
  using FileKey = std::tuple<unsigned long, unsigned long, long, long, long, long, long>;

  Member();

  // Needs call_mutex_ held exclusively.
  CK_RV LoadLibrary(const std::string& path);
  CK_RV InitializeSoftHsm();
  void Restart();

  void PollControlFile();
  void ApplySpecLocked(std::string_view spec, std::string_view source);
  // Blocks until the spec changes or C_Finalize; true when C_Finalize released it.
  bool WaitForReleaseLocked(std::unique_lock<std::mutex>& lock);

  static bool HandsOutResult(Fn fn);
  // Needs call_mutex_ held (shared is enough).
  void LogServed(Fn fn) const;

  std::string so_path_;

  // Guards the SoftHSM library, its initialisation and the configuration read with it.
  std::shared_mutex call_mutex_;
  std::atomic<bool> initialized_{false};
  void* library_ = nullptr;
  std::string library_path_;
  CK_FUNCTION_LIST* functions_ = nullptr;
  std::string softhsm_conf_;
  std::optional<std::vector<CK_MECHANISM_TYPE>> mechanisms_;
  std::string served_log_;
  // Changes whenever SoftHSM is finalised (restart, C_Finalize); written with call_mutex_ held
  // exclusively, so a reader holding it shared sees a stable value.
  std::atomic<std::uint64_t> instance_{0};

  std::array<std::atomic<int>, kFunctionCount> counts_{};

  // Guards the fault state.
  std::mutex fault_mutex_;
  std::condition_variable fault_changed_;
  std::vector<ActiveRule> rules_;
  bool dead_ = false;
  bool restart_pending_ = false;
  unsigned long generation_ = 0;
  unsigned long finalize_epoch_ = 0;
  std::mutex control_mutex_;
  FileKey control_key_{};
  mutable std::mutex dump_mutex_;
};

}  // namespace p11ha::test_member
