// SPDX-License-Identifier: Apache-2.0
// The least a hand-off to another CPU can cost: a call passed to a thread of its own and its
// answer passed back, each through one atomic on a cache line of its own, both sides spinning.
// No timeout, no sleeping, no sharing between callers: the floor under p11ha's call workers,
// which do all of that (provider/member/call_executor.cpp).
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <functional>
#include <thread>

namespace p11ha::bench {

inline void CpuPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class BareHandoff {
 public:
  // `call` runs on the partner thread only, and must outlive this object.
  explicit BareHandoff(const std::function<CK_RV()>& call) : call_(call), partner_([this] { Serve(); }) {}
  ~BareHandoff() {
    posted_.sequence.store(kStop, std::memory_order_release);
    partner_.join();
  }
  BareHandoff(const BareHandoff&) = delete;
  BareHandoff& operator=(const BareHandoff&) = delete;

  // The partner thread, for a 1-thread measurement's placement (PinThread).
  std::thread& partner() { return partner_; }

  CK_RV operator()() {
    const long sequence = ++sent_;
    posted_.sequence.store(sequence, std::memory_order_release);
    while (answered_.sequence.load(std::memory_order_acquire) != sequence) CpuPause();
    return answered_.rv;
  }

 private:
  static constexpr long kStop = -1;
  void Serve() {
    for (long done = 0;;) {
      long sequence;
      while ((sequence = posted_.sequence.load(std::memory_order_acquire)) == done) CpuPause();
      if (sequence == kStop) return;
      answered_.rv = call_();
      done = sequence;
      answered_.sequence.store(sequence, std::memory_order_release);
    }
  }

  struct alignas(64) Posted {
    std::atomic<long> sequence{0};
  };
  struct alignas(64) Answered {
    std::atomic<long> sequence{0};
    CK_RV rv = CKR_OK;  // written before `sequence`, read after it
  };
  const std::function<CK_RV()>& call_;
  Posted posted_;
  Answered answered_;
  long sent_ = 0;
  std::thread partner_;  // last: it starts once the rest exists
};

}  // namespace p11ha::bench
