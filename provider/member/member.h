// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "config/config.h"
#include "provider/core/secure_bytes.h"
#include "provider/member/pinned_epoch.h"
#include "provider/member/call_executor.h"
#include "provider/member/mechanisms.h"

namespace p11ha {

// How a member call is scheduled. SoftHSM 2.6.1 corrupts its object store when two threads
// change or search it at once (research/softhsm-2.6.1.md §9), so those calls are serialised
// per member token; crypto on separate sessions stays parallel.
enum class CallKind { kParallel, kStore };

// kRecovering: connected again and being logged in and reconciled; it serves once kUp.
enum class MemberState { kDown, kRecovering, kUp };
const char* MemberStateName(MemberState state);

// True for answers that mean the member itself failed, not the request.
bool IsDeviceClass(CK_RV rv);
// A login answer that is no verdict on the PIN: SoftHSM 2.6.1 gives one of these while another
// process rewrites its token file, and for good once it lost the token (README "Behaviour
// notes"). So p11ha retries such a login, and never holds it against the PIN.
bool LoginNotAVerdict(CK_RV rv);

struct MemberStatus {
  std::string name;
  MemberState state = MemberState::kDown;
  bool standby = false;
  std::chrono::system_clock::time_point since;
  std::uint64_t failures = 0;
  std::string last_error;
  std::uint64_t epoch = 0;
};

// The state of a Member::CallWithState job, shared by the job and its caller.
struct CallState {
  // Set by the job as its last step: from then on the state is the caller's alone.
  std::atomic<bool> finished{false};
  bool Finished() const { return finished.load(std::memory_order_acquire); }
};

// One member: a loaded module instance, the token it serves, and its health. Every outbound
// call goes through Call(), which applies the quirks, times the call, gives up after the call
// timeout and classifies the answer.
class Member {
 public:
  Member(std::size_t index, config::MemberConfig config, std::chrono::milliseconds call_timeout);
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
  // Without library threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS) calls run on the caller's
  // thread and cannot time out.
  void UseWorkers(bool workers) { use_workers_ = workers; }
  // Initialises the instance, selects the token by URI and opens the control session.
  // Returns false (with the reason recorded) when the token is not reachable. The member stays
  // down until Activate(), so that it is logged in (and later reconciled) before it serves.
  bool Connect();
  void Activate();
  // Finalises the instance once the calls in progress have returned; cached state tied to the
  // old epoch becomes stale. An instance with a call that never returned is discarded instead
  // (left loaded and initialised, never touched again) and Connect() loads a fresh one.
  void Disconnect();
  void Unload();
  // Ends the call workers; waits for abandoned ones until `deadline` (C_Finalize).
  void StopWorkers(std::chrono::steady_clock::time_point deadline);

  bool up() const { return state_.load(std::memory_order_acquire) == MemberState::kUp; }
  // Changes whenever the member is (re)connected: member handles of an older epoch are void.
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  CK_SLOT_ID slot() const { return slot_; }
  CK_FUNCTION_LIST* functions() const { return functions_.load(std::memory_order_acquire); }
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

  // A call that does not return within the call timeout answers CKR_DEVICE_ERROR and takes the
  // member down; so does any call once the member is being disconnected.
  template <typename Fn, typename... Args>
  CK_RV Call(const char* name, CallKind kind, Fn CK_FUNCTION_LIST::*field, Args... args) {
    CK_FUNCTION_LIST* functions = this->functions();
    Fn fn = functions == nullptr ? nullptr : functions->*field;
    if (fn == nullptr) return functions == nullptr ? CKR_DEVICE_ERROR : CKR_FUNCTION_NOT_SUPPORTED;
    return Execute(name, kind, CallJob::Of([fn, args...] { return fn(args...); }));
  }

  // Several calls as one member call: one hand-off to a call worker instead of one per call.
  // The body runs as body(functions, *state), checks the functions it uses are there, and
  // captures plain values only (CallJob); what it reads or writes beyond those is in `state`.
  // State derives from CallState. The caller reads anything else of it only once Finished():
  // otherwise the job never ran, or was abandoned after the call timeout and may still write
  // there (the shared state outlives the caller's share). An exception ends the body with
  // CKR_GENERAL_ERROR: nothing may leave a worker thread.
  template <typename State, typename Body>
  CK_RV CallWithState(const char* name, CallKind kind, std::shared_ptr<State> state, const Body& body) {
    static_assert(std::is_base_of_v<CallState, State>);
    CK_FUNCTION_LIST* functions = this->functions();
    if (functions == nullptr) return CKR_DEVICE_ERROR;
    return Execute(name, kind, CallJob::Owning(std::move(state), [functions, body](State& owned) {
                     CK_RV rv = CKR_GENERAL_ERROR;
                     try {
                       rv = body(*functions, owned);
                     } catch (...) {
                     }
                     owned.finished.store(true, std::memory_order_release);
                     return rv;
                   }));
  }

  // An operation start sent together with the operation's first step (InitMemory).
  struct PendingInit {
    CK_C_SignInit CK_FUNCTION_LIST::*field;  // C_SignInit, C_VerifyInit, C_EncryptInit, ...
    CK_MECHANISM_PTR mechanism;
    CK_OBJECT_HANDLE key;
  };
  // Marks an answer of CallAfterInit that is the start's refusal, not the step's answer.
  // Members' answers fit in 32 bits.
  static constexpr CK_RV kInitRefused = CK_RV{1} << 40;

  // The start, then the step on the same member session, as one member call: one hand-off to a
  // call worker instead of two.
  template <typename Fn, typename... Args>
  CK_RV CallAfterInit(const char* name, const PendingInit& start, Fn CK_FUNCTION_LIST::*field,
                      CK_SESSION_HANDLE session, Args... args) {
    static_assert(sizeof(CK_RV) > 4, "kInitRefused needs answers wider than 32 bits");
    CK_FUNCTION_LIST* functions = this->functions();
    if (functions == nullptr) return CKR_DEVICE_ERROR;
    Fn fn = functions->*field;
    CK_C_SignInit init = functions->*start.field;
    if (fn == nullptr || init == nullptr) return CKR_FUNCTION_NOT_SUPPORTED;
    // The mechanism's head travels in the job, by value: the worker then reads no memory that
    // the caller has just written besides the job's own lines (a copy made for each operation
    // would be one more cache line to move to the worker's CPU). A parameter stays where the
    // operation keeps it.
    const CK_MECHANISM mechanism = *start.mechanism;
    const CK_OBJECT_HANDLE key = start.key;
    return Execute(name, CallKind::kParallel, CallJob::Of([init, mechanism, key, fn, session, args...] {
                     // The job is run in place and its storage is not touched until the answer
                     // is taken, so the member may keep this pointer for the call's length.
                     const CK_RV started = init(session, const_cast<CK_MECHANISM_PTR>(&mechanism), key);
                     return started == CKR_OK ? fn(session, args...) : started | kInitRefused;
                   }));
  }

 private:
  CK_RV Execute(const char* name, CallKind kind, const CallJob& job);
  // A call given up on (timed out, or released): its worker may stay inside the member.
  void OnAbandoned(const std::string& why);
  // Leaves the current instance behind (see Disconnect()); FinalizeLeftBehind() finalises and
  // releases such instances once no abandoned call is inside them any more.
  void Discard(const std::string& why);
  void FinalizeLeftBehind();
  // Unblocks calls stuck on a stopped p11-kit server by shutting down this process's sockets
  // to it: the client then sees the connection end and returns instead of waiting forever.
  void ShutdownRemoteSockets();
  // Serialisation and SIGPIPE shielding for a call run on the caller's own thread.
  class CallScope {
   public:
    CallScope(Member& member, CallKind kind);
    ~CallScope();

   private:
    Member& member_;
    std::shared_ptr<std::mutex> store_;
    std::unique_lock<std::mutex> store_lock_;
    bool pipe_shielded_ = false;
    bool had_pipe_pending_ = false;
    sigset_t old_mask_;
  };

  bool FindToken();
  void LoadMechanisms();
  void RecordFailure(const std::string& what);

  const std::size_t index_;
  const config::MemberConfig config_;
  const std::chrono::milliseconds call_timeout_;

  std::atomic<CK_FUNCTION_LIST*> functions_{nullptr};
  bool initialized_ = false;
  bool use_workers_ = true;
  std::unique_ptr<CallExecutor> executor_;
  // Calls are admitted while the gate is open; Disconnect closes it and waits for `active_`.
  std::atomic<bool> gate_open_{false};
  std::atomic<int> active_{0};
  // The thread running Connect()/Disconnect(), which passes the closed gate.
  std::atomic<std::thread::id> connector_{};
  // A call on this instance was abandoned: it may still be inside the member.
  std::atomic<bool> tainted_{false};
  std::vector<CK_FUNCTION_LIST*> left_behind_;  // touched by the connecting thread only
  CK_SLOT_ID slot_ = 0;
  CK_SESSION_HANDLE control_session_ = CK_INVALID_HANDLE;
  CK_TOKEN_INFO token_info_{};
  MechanismTable mechanisms_;

  std::atomic<MemberState> state_{MemberState::kDown};
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<std::uint64_t> failures_{0};

  // The per-token serialisation quirk, the only lock held across a call. Shared with the call
  // workers, which hold it themselves, so an abandoned call never leaves a caller holding it.
  std::atomic<std::shared_ptr<std::mutex>> store_mu_{std::make_shared<std::mutex>()};
  mutable std::mutex status_mu_;  // guards the fields below; never held across a call
  std::string last_error_;
  std::chrono::system_clock::time_point since_ = std::chrono::system_clock::now();
};

}  // namespace p11ha
