// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <boost/thread/condition_variable.hpp>
#include <boost/thread/mutex.hpp>
#include <boost/thread/thread.hpp>
#include <chrono>
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

  void Start();
  // Returns once the thread has ended; called at C_Finalize so no thread outlives it.
  void Stop();
  // Asks for a probe now instead of at the next interval (a member just failed).
  void Wake();

 private:
  void Run();

  MemberPool& pool_;
  const std::chrono::milliseconds interval_;
  OnUp on_up_;
  boost::mutex mu_;
  boost::condition_variable wake_;
  bool stop_ = false;
  bool woken_ = false;
  boost::thread thread_;
};

}  // namespace p11ha
