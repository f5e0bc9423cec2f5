// SPDX-License-Identifier: Apache-2.0
#include "provider/member/call_looks.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>

namespace p11ha::call_looks {
namespace {

// On one CPU a look only delays the side it waits for, which needs that CPU to answer.
bool CanLook(int usable_cpus) { return usable_cpus > 1; }

std::chrono::microseconds Usual(std::int64_t typical_ns) { return std::chrono::microseconds(typical_ns * 2 / 1000); }

const cpu_set_t* ProcessCpuSet() {
  static const cpu_set_t* const cpus = []() -> const cpu_set_t* {
    static cpu_set_t set;
    CPU_ZERO(&set);
    // The main thread's id is the process's. It may have ended (pthread_exit); then this
    // thread's CPUs are the best guess left.
    if (sched_getaffinity(getpid(), sizeof set, &set) == 0 || sched_getaffinity(0, sizeof set, &set) == 0) return &set;
    return nullptr;
  }();
  return cpus;
}

}  // namespace

std::chrono::microseconds CallerLook(std::int64_t typical_ns, int cpus_busy, int usable_cpus) {
  if (typical_ns >= kLooksBelowNs || !CanLook(usable_cpus)) return {};
  // Counting the call about to be posted: its worker takes a CPU too.
  if (cpus_busy + 1 < usable_cpus) return kSpin + Usual(typical_ns);
  if (typical_ns < kBriefCallNs) return kBriefLook + Usual(typical_ns);
  return {};
}

std::chrono::microseconds WorkerLook(std::int64_t typical_ns, int busy_at_post, int given_back, int usable_cpus) {
  if (typical_ns >= kLooksBelowNs || !CanLook(usable_cpus)) return {};
  if (busy_at_post - given_back < usable_cpus) return kSpin;
  // Every CPU busy and a slow call: its caller sleeps, and must be woken and run before it can
  // post again, perhaps on the CPU this look would hold.
  return typical_ns < kBriefCallNs ? kBriefLook : std::chrono::microseconds{};
}

int ProcessCpus() {
  // Counted once: every member call asks.
  static const int count = [] {
    const cpu_set_t* cpus = ProcessCpuSet();
    return cpus == nullptr ? 1 : std::max(1, CPU_COUNT(cpus));
  }();
  return count;
}

void AdoptProcessCpus() {
  // Refused (the cpuset shrank since): the worker keeps what it inherited, which still runs.
  if (const cpu_set_t* cpus = ProcessCpuSet()) sched_setaffinity(0, sizeof *cpus, cpus);
}

}  // namespace p11ha::call_looks
