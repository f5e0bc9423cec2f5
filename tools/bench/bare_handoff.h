// SPDX-License-Identifier: Apache-2.0
// The least a hand-off to another thread can cost: a call passed to a thread of its own and its
// answer passed back, each through one atomic on a cache line of its own. No timeout, no
// sharing between callers: the floor under p11ha's call workers, which do all of that
// (provider/member/call_executor.cpp). Both sides spin (HandoffWait::kSpin) while each caller
// has a CPU free for its partner; otherwise (every CPU busy with a caller) a hand-off must put
// the caller to sleep so that the partner can run, and both sides wait in futex (kSleep).
#pragma once

#include <linux/futex.h>
#include <p11-kit/pkcs11.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>

namespace p11ha::bench {

inline void CpuPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

enum class HandoffWait { kSpin, kSleep };

class BareHandoff {
 public:
  // `call` runs on the partner thread only, and must outlive this object.
  BareHandoff(const std::function<CK_RV()>& call, HandoffWait wait)
      : call_(call), wait_(wait), partner_([this] { Serve(); }) {}
  ~BareHandoff() {
    Post(posted_.sequence, kStop);
    partner_.join();
  }
  BareHandoff(const BareHandoff&) = delete;
  BareHandoff& operator=(const BareHandoff&) = delete;

  // The partner thread, for a 1-thread measurement's placement (PinThread).
  std::thread& partner() { return partner_; }

  CK_RV operator()() {
    const int sequence = ++sent_;
    Post(posted_.sequence, sequence);
    WaitWhile(answered_.sequence, [sequence](int seen) { return seen != sequence; });
    return answered_.rv;
  }

 private:
  static constexpr int kStop = -1;
  void Serve() {
    for (int done = 0;;) {
      const int sequence = WaitWhile(posted_.sequence, [done](int seen) { return seen == done; });
      if (sequence == kStop) return;
      answered_.rv = call_();
      done = sequence;
      Post(answered_.sequence, sequence);
    }
  }

  void Post(std::atomic<int>& word, int value) {
    word.store(value, std::memory_order_release);
    if (wait_ == HandoffWait::kSleep) syscall(SYS_futex, Address(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }
  // Returns the first value of `word` for which `waiting` is false.
  template <typename Waiting>
  int WaitWhile(std::atomic<int>& word, Waiting waiting) {
    for (;;) {
      const int seen = word.load(std::memory_order_acquire);
      if (!waiting(seen)) return seen;
      if (wait_ == HandoffWait::kSpin) {
        CpuPause();
      } else {
        syscall(SYS_futex, Address(word), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
      }
    }
  }
  static int* Address(std::atomic<int>& word) {
    static_assert(sizeof(std::atomic<int>) == sizeof(int) && std::atomic<int>::is_always_lock_free);
    return reinterpret_cast<int*>(&word);
  }

  struct alignas(64) Posted {
    std::atomic<int> sequence{0};
  };
  struct alignas(64) Answered {
    std::atomic<int> sequence{0};
    CK_RV rv = CKR_OK;  // written before `sequence`, read after it
  };
  const std::function<CK_RV()>& call_;
  const HandoffWait wait_;
  Posted posted_;
  Answered answered_;
  int sent_ = 0;
  std::thread partner_;  // last: it starts once the rest exists
};

}  // namespace p11ha::bench
