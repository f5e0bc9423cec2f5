// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <boost/thread/condition_variable.hpp>
#include <boost/thread/mutex.hpp>
#include <boost/thread/thread.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "provider/member/member_pool.h"

namespace p11ha {

// Brings down members back: every probe interval it re-initialises each down member and, once
// its token answers, hands it to `on_up` (which logs it in) before it serves again.
class HealthMonitor {
 public:
  using OnUp = std::function<bool(Member&)>;

  HealthMonitor(MemberPool& pool, std::chrono::milliseconds interval, OnUp on_up);
  ~HealthMonitor();

  // Probes from a thread of its own; without one (the application set
  // CKF_LIBRARY_CANT_CREATE_OS_THREADS) the calling threads probe through Tick().
  void Start(bool own_thread);
  // Returns once the thread has ended; called at C_Finalize so no thread outlives it.
  void Stop();
  // Asks for a probe now instead of at the next interval (a member just failed).
  void Wake();
  // Without an own thread: probes down members if a probe interval has passed; at most one
  // caller probes at a time and the others go on without waiting.
  void Tick();

 private:
  void Run();
  void ProbeDownMembers();

  MemberPool& pool_;
  const std::chrono::milliseconds interval_;
  OnUp on_up_;
  boost::mutex mu_;
  boost::condition_variable wake_;
  bool stop_ = false;
  bool woken_ = false;
  bool own_thread_ = false;
  std::atomic<bool> ticking_{false};
  std::atomic<std::int64_t> next_tick_ns_{0};
  boost::thread thread_;
};

}  // namespace p11ha
