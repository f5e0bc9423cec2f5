// SPDX-License-Identifier: Apache-2.0
#include "cpu_placement.h"

#include <pthread.h>
#include <sched.h>
#include <sys/types.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace p11ha::bench {
namespace {

cpu_set_t OnlyCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return set;
}

void Pin(pid_t thread, int cpu) {
  const cpu_set_t set = OnlyCpu(cpu);
  if (sched_setaffinity(thread, sizeof set, &set) != 0)
    throw std::runtime_error("cannot pin thread " + std::to_string(thread) + " to CPU " + std::to_string(cpu));
}

}  // namespace

std::vector<int> UsableCpuList() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

std::optional<Placement> PlacementForRound(const std::vector<int>& cpus, int round) {
  if (cpus.size() < 2) return std::nullopt;
  const bool swapped = (round / 2) % 2 == 1;
  return Placement{swapped ? cpus[1] : cpus[0], swapped ? cpus[0] : cpus[1]};
}

std::string CueFor(const std::optional<Placement>& placement) {
  if (!placement) return "go";
  return "go work_cpu=" + std::to_string(placement->work_cpu) + " caller_cpu=" + std::to_string(placement->caller_cpu);
}

std::optional<Placement> PlacementOfCue(const std::string& cue) {
  std::istringstream words(cue);
  std::optional<int> work, caller;
  for (std::string word; words >> word;) {
    if (word.starts_with("work_cpu=")) work = std::stoi(word.substr(9));
    if (word.starts_with("caller_cpu=")) caller = std::stoi(word.substr(11));
  }
  if (!work || !caller) return std::nullopt;
  return Placement{*work, *caller};
}

void PinThisThread(int cpu) { Pin(0, cpu); }

void PinThread(std::thread& thread, int cpu) {
  const cpu_set_t set = OnlyCpu(cpu);
  if (pthread_setaffinity_np(thread.native_handle(), sizeof set, &set) != 0)
    throw std::runtime_error("cannot pin a partner thread to CPU " + std::to_string(cpu));
}

void PinOtherThreads(int cpu) {
  const pid_t self = gettid();
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    const pid_t thread = static_cast<pid_t>(std::stol(task.path().filename().string()));
    // A thread may end between the listing and the pin; it then needs no pin.
    if (thread == self) continue;
    try {
      Pin(thread, cpu);
    } catch (const std::runtime_error&) {
      if (std::filesystem::exists(task.path())) throw;
    }
  }
}

}  // namespace p11ha::bench
