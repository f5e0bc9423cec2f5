// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <boost/thread/condition_variable.hpp>
#include <boost/thread/mutex.hpp>
#include <boost/thread/thread.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "provider/member/member_pool.h"

namespace p11ha {

// Brings down members back: it re-initialises each down member and, once its token answers,
// hands it to `on_up` (which logs it in and reconciles it) before it serves again.
//
// Each member has its own probe thread, so a member whose probe hangs until the call timeout
// (a stopped server) delays nobody else's return. Probes back off while a member stays down:
// half a probe interval after it fails (most outages are blips), then one interval, then at
// most two, so that a restarted member serves again within about two intervals.
class HealthMonitor {
 public:
  using OnUp = std::function<bool(Member&)>;

  HealthMonitor(MemberPool& pool, std::chrono::milliseconds interval, OnUp on_up);
  ~HealthMonitor();

  // Probes from threads of its own; without them (the application set
  // CKF_LIBRARY_CANT_CREATE_OS_THREADS) the calling threads probe through Tick().
  void Start(bool own_threads);
  // Returns once every probe thread has ended; called at C_Finalize so none outlives it.
  void Stop();
  // Asks for a probe of the down members now instead of at their next turn (one just failed).
  void Wake();
  // Without own threads: probes down members whose turn has come; at most one caller probes
  // at a time and the others go on without waiting.
  void Tick();

  // The delay before the next probe after `failures` failed ones in a row.
  std::chrono::milliseconds Backoff(unsigned failures) const;

 private:
  struct Probe {
    boost::thread thread;
    unsigned failures = 0;
    std::chrono::steady_clock::time_point next{};
  };
  void Run(std::size_t index);
  // One probe of a down member; true when it serves again.
  bool ProbeOnce(std::size_t index);

  MemberPool& pool_;
  const std::chrono::milliseconds interval_;
  OnUp on_up_;
  boost::mutex mu_;
  boost::condition_variable wake_;
  bool stop_ = false;
  std::uint64_t wakes_ = 0;  // guarded by mu_; a probe thread sleeps until this changes
  bool own_threads_ = false;
  std::atomic<bool> ticking_{false};
  std::vector<std::unique_ptr<Probe>> probes_;
};

}  // namespace p11ha
