// SPDX-License-Identifier: Apache-2.0
#include "provider/member/health_monitor.h"

#include <signal.h>

#include <algorithm>

namespace p11ha {

HealthMonitor::HealthMonitor(MemberPool& pool, std::chrono::milliseconds interval, OnUp on_up)
    : pool_(pool), interval_(interval), on_up_(std::move(on_up)) {
  for (std::size_t i = 0; i < pool_.size(); ++i) probes_.push_back(std::make_unique<Probe>());
}

HealthMonitor::~HealthMonitor() { Stop(); }

std::chrono::milliseconds HealthMonitor::Backoff(unsigned failures) const {
  if (failures <= 1) return std::max(interval_ / 2, std::chrono::milliseconds(1));
  if (failures <= 3) return interval_;
  return interval_ * 2;
}

void HealthMonitor::Start(bool own_threads) {
  own_threads_ = own_threads;
  if (!own_threads) return;
  // The probe threads must never take the host's signals (SIGPIPE from a dead remote member
  // above all), so they start with every signal blocked.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (std::size_t i = 0; i < probes_.size(); ++i) probes_[i]->thread = boost::thread([this, i] { Run(i); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void HealthMonitor::Stop() {
  {
    boost::lock_guard<boost::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& probe : probes_)
    if (probe->thread.joinable()) probe->thread.join();
}

void HealthMonitor::Wake() {
  {
    boost::lock_guard<boost::mutex> lock(mu_);
    ++wakes_;
    if (!own_threads_)
      for (auto& probe : probes_) probe->next = {};
  }
  wake_.notify_all();
}

bool HealthMonitor::ProbeOnce(std::size_t index) {
  Member& member = pool_.at(index);
  return member.Connect() && on_up_(member);
}

void HealthMonitor::Run(std::size_t index) {
  Probe& probe = *probes_[index];
  boost::unique_lock<boost::mutex> lock(mu_);
  for (;;) {
    if (stop_) return;
    if (pool_.at(index).up()) {
      // Serving: sleep until a failure wakes us (or a slow check of the interval).
      probe.failures = 0;
      std::uint64_t seen = wakes_;
      wake_.wait_for(lock, boost::chrono::milliseconds(interval_.count()), [&] { return stop_ || wakes_ != seen; });
      continue;
    }
    if (probe.failures > 0) {
      // A member that just went down is probed at once; after that, with backoff.
      auto delay = Backoff(probe.failures);
      std::uint64_t seen = wakes_;
      wake_.wait_for(lock, boost::chrono::milliseconds(delay.count()), [&] { return stop_ || wakes_ != seen; });
      if (stop_) return;
    }
    lock.unlock();
    bool back = ProbeOnce(index);
    lock.lock();
    probe.failures = back ? 0 : probe.failures + 1;
  }
}

void HealthMonitor::Tick() {
  if (own_threads_) return;
  if (ticking_.exchange(true, std::memory_order_acquire)) return;
  const auto now = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < probes_.size(); ++i) {
    Probe& probe = *probes_[i];
    if (pool_.at(i).up()) {
      probe.failures = 0;
      continue;
    }
    {
      boost::lock_guard<boost::mutex> lock(mu_);
      if (stop_) break;
      if (now < probe.next) continue;
    }
    bool back = ProbeOnce(i);
    boost::lock_guard<boost::mutex> lock(mu_);
    probe.failures = back ? 0 : probe.failures + 1;
    probe.next = std::chrono::steady_clock::now() + Backoff(probe.failures);
  }
  ticking_.store(false, std::memory_order_release);
}

}  // namespace p11ha
