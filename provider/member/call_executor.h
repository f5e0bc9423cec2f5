// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <type_traits>
#include <vector>

namespace p11ha {

// A member call packed so that a worker thread can run it: a function pointer plus its
// arguments, copied by value. Nothing in it points into the packer's stack frame, so a worker
// that is still inside a hung member after its caller gave up never touches a dead frame.
class CallJob {
 public:
  static constexpr std::size_t kBytes = 128;

  template <typename F>
  static CallJob Of(const F& callable) {
    static_assert(std::is_trivially_copyable_v<F> && sizeof(F) <= kBytes && alignof(F) <= alignof(void*),
                  "a member call must be a small lambda capturing plain values");
    CallJob job;
    std::memcpy(job.storage_, &callable, sizeof(F));
    job.size_ = sizeof(F);
    job.invoke_ = [](const void* stored) -> CK_RV { return (*static_cast<const F*>(stored))(); };
    return job;
  }

  CallJob() = default;
  CallJob(const CallJob& other) { *this = other; }
  // Copies only the bytes the call uses, and writes the tail only when it changes: a worker's
  // job lives on lines that move to the worker's CPU with every call, and each line written
  // here is one more to move.
  CallJob& operator=(const CallJob& other) {
    if (this == &other) return *this;
    invoke_ = other.invoke_;
    std::memcpy(storage_, other.storage_, other.size_);
    if (size_ != other.size_) size_ = other.size_;
    if (state_ || other.state_) state_ = other.state_;
    return *this;
  }

  // A job over state on the heap that it shares with its caller: the job may write there, and
  // a caller that gives up after the call timeout leaves the state alive for the job. `callable`
  // takes the state and, like Of's, captures plain values only.
  template <typename State, typename F>
  static CallJob Owning(std::shared_ptr<State> state, const F& callable) {
    CallJob job = Of([callable, raw = state.get()] { return callable(*raw); });
    job.state_ = std::move(state);
    return job;
  }

  CK_RV operator()() const { return invoke_(storage_); }
  // The worker lets go of the state once the job ran; the caller holds its own share.
  void ReleaseState() { state_.reset(); }
  bool owns_state() const { return state_ != nullptr; }

 private:
  // First, and arguments aligned no more than pointers, so that a small call's function and
  // arguments share the fewest cache lines: the worker reads only the lines the call uses.
  CK_RV (*invoke_)(const void*) = nullptr;
  alignas(void*) unsigned char storage_[kBytes];
  // The tail, past what a small call uses: a plain call neither writes nor reads it.
  std::uint32_t size_ = 0;
  std::shared_ptr<void> state_;  // Owning's; empty for the plain calls of the hot path
};

// Runs member calls on worker threads so that a caller can stop waiting after the call timeout:
// a stopped p11-kit server never answers and has no timeout of its own
// (research/p11-kit-remote.md Q3). Workers are kept and reused; a worker whose call was
// abandoned finishes that call alone and then ends. Workers take no signal (SIGPIPE from a dead
// remote member above all stays pending on the worker and harms nobody).
class CallExecutor {
 public:
  explicit CallExecutor(std::chrono::milliseconds timeout);
  ~CallExecutor();
  CallExecutor(const CallExecutor&) = delete;
  CallExecutor& operator=(const CallExecutor&) = delete;

  // The call's answer, or nullopt when it did not return within `answer_wait` (the timeout
  // unless given). `serialise`, when set, is held by the worker around the call (a member's
  // store quirk); the worker keeps it alive, so a hung call never leaves a caller holding it.
  // The wait for the answer counts from the moment the worker holds it (without `serialise`,
  // from the call's posting: a worker that looks for work takes it at once).
  // `call_site` names the kind of call (the function's name): each kind's usual duration
  // decides whether, and how long, the caller looks for the answer before it sleeps.
  // Why a call got no answer (Run's nullopt), told through Run's `unanswered` when given.
  enum class Unanswered { kTimedOut, kReleased };
  std::optional<CK_RV> Run(const CallJob& job, const std::shared_ptr<std::mutex>& serialise = nullptr,
                           std::optional<std::chrono::milliseconds> answer_wait = std::nullopt,
                           const void* call_site = nullptr, Unanswered* unanswered = nullptr);
  // Every caller waiting for an answer at this moment stops waiting: its call is abandoned as
  // if it had timed out (kReleased). For a member whose device failed under one call: the
  // others ride on the same connection, and p11-kit 0.24 can leave one of them blocked for good
  // once another has closed it (a select() on the closed socket, without a timeout).
  void ReleaseWaiters();

  // Ends the idle workers and waits until `deadline` for abandoned ones, which are then left
  // inside their member (DESIGN.md "Failure"). Returns how many were left.
  std::size_t Shutdown(std::chrono::steady_clock::time_point deadline);

  std::size_t abandoned() const;

 private:
  struct Shared;
  struct Worker;
  std::shared_ptr<Worker> TakeIdle();
  void ReturnIdle(std::shared_ptr<Worker> worker);
  static void Loop(std::shared_ptr<Worker> worker);
  // How long a caller looks for the answer before it sleeps (call_executor.cpp says why):
  // zero for slow calls, and for quick ones while no CPU is free.
  static std::chrono::microseconds LookFor(std::int64_t typical_ns);
  // The job no longer wants a CPU: it is done or abandoned (by its caller, who owns the count).
  static void ReleaseCpu(Worker& worker);
  // The answer of a call that is done; the worker goes back to the idle list.
  CK_RV TakeAnswer(std::shared_ptr<Worker> worker, std::atomic<std::int64_t>& typical);
  void JoinEndedLocked();

  // A call may queue this many call timeouts for its member's store lock before it counts as
  // unanswered; a reconciliation holds the lock for many short calls in a row.
  static constexpr int kQueueFactor = 3;
  // Moving averages of how long calls took, in ns, by call site (hashed; a collision only blurs
  // the guess). Read and written without ordering: they steer looking, nothing else.
  static constexpr std::size_t kCallSites = 64;
  std::atomic<std::int64_t>& TypicalFor(const void* call_site);
  std::array<std::atomic<std::int64_t>, kCallSites> typical_ns_{};
  const std::chrono::milliseconds timeout_;
  std::shared_ptr<Shared> shared_;
  std::atomic<std::uint64_t> releases_{0};  // ReleaseWaiters calls so far
  std::mutex idle_mu_;  // never held across a call; guards the two lists and shut_down_
  std::vector<std::shared_ptr<Worker>> idle_;
  // Every worker whose thread is not joined yet, abandoned ones included: threads are joined
  // (not detached) so that none is left running once C_Finalize returns.
  std::vector<std::shared_ptr<Worker>> threads_;
  bool shut_down_ = false;
};

}  // namespace p11ha
