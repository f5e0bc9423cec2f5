// SPDX-License-Identifier: Apache-2.0
#include "provider/member/health_monitor.h"

#include <signal.h>

namespace p11ha {

HealthMonitor::HealthMonitor(MemberPool& pool, std::chrono::milliseconds interval, OnUp on_up)
    : pool_(pool), interval_(interval), on_up_(std::move(on_up)) {}

HealthMonitor::~HealthMonitor() { Stop(); }

void HealthMonitor::Start(bool own_thread) {
  own_thread_ = own_thread;
  if (!own_thread) return;
  // The probe thread must never take the host's signals (SIGPIPE from a dead remote member
  // above all), so it starts with every signal blocked.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  thread_ = boost::thread([this] { Run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void HealthMonitor::Stop() {
  {
    boost::lock_guard<boost::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HealthMonitor::Wake() {
  if (!own_thread_) {
    next_tick_ns_.store(0, std::memory_order_relaxed);
    return;
  }
  {
    boost::lock_guard<boost::mutex> lock(mu_);
    woken_ = true;
  }
  wake_.notify_all();
}

void HealthMonitor::Run() {
  for (;;) {
    {
      boost::unique_lock<boost::mutex> lock(mu_);
      wake_.wait_for(lock, boost::chrono::milliseconds(interval_.count()), [this] { return stop_ || woken_; });
      if (stop_) return;
      woken_ = false;
    }
    ProbeDownMembers();
  }
}

void HealthMonitor::ProbeDownMembers() {
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    Member& member = pool_.at(i);
    if (member.up()) continue;
    {
      boost::lock_guard<boost::mutex> lock(mu_);
      if (stop_) return;
    }
    if (member.Connect()) on_up_(member);
  }
}

void HealthMonitor::Tick() {
  if (own_thread_) return;
  auto now = std::chrono::steady_clock::now().time_since_epoch();
  std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  if (now_ns < next_tick_ns_.load(std::memory_order_relaxed)) return;
  if (ticking_.exchange(true, std::memory_order_acquire)) return;
  next_tick_ns_.store(now_ns + std::chrono::duration_cast<std::chrono::nanoseconds>(interval_).count(),
                      std::memory_order_relaxed);
  ProbeDownMembers();
  ticking_.store(false, std::memory_order_release);
}

}  // namespace p11ha
