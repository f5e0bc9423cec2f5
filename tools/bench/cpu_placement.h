// SPDX-License-Identifier: Apache-2.0
// Where a 1-thread measurement runs. On the 2-vCPU machines we measure on, one vCPU was seen to
// sign 25-35 % slower than the other for minutes at a time (its host core is shared), so a
// ratio depended on which vCPU each side's signing thread happened to land on. Each round
// names the CPU that does the module's work and the CPU the application thread waits on, and
// every side of that round uses the same two.
#pragma once

#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace p11ha::bench {

struct Placement {
  int work_cpu = 0;    // runs the module's calls
  int caller_cpu = 0;  // the application thread, when the calls run on another thread
};

// Who runs the module's calls on the measured side.
enum class CallsRunOn {
  kCaller,          // the application thread itself (the module used directly, or p11ha without call workers)
  kPartner,         // the bench's own partner thread (BareHandoff)
  kModuleThreads,   // threads the module made (p11ha's call workers): every other thread of the process
};

// The CPUs this process may use, lowest first.
std::vector<int> UsableCpuList();
// Round `round`'s placement over the first two usable CPUs: the work CPU changes every two
// rounds, so that each CPU sees both orders of the sides. None with fewer than two CPUs.
std::optional<Placement> PlacementForRound(const std::vector<int>& cpus, int round);

// The cue line that carries a placement to a measuring process, and back from it.
std::string CueFor(const std::optional<Placement>& placement);
std::optional<Placement> PlacementOfCue(const std::string& cue);

// Pins the calling thread, or `thread`, to `cpu`. Throws std::runtime_error if the kernel refuses.
void PinThisThread(int cpu);
void PinThread(std::thread& thread, int cpu);
// Pins every thread of this process but the calling one to `cpu`.
void PinOtherThreads(int cpu);

}  // namespace p11ha::bench
