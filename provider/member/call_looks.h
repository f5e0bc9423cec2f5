// SPDX-License-Identifier: Apache-2.0
// When the two sides of a member call's hand-off (call_executor.cpp) look for each other's
// signal instead of sleeping, and on which CPUs the call workers run.
#pragma once

#include <chrono>
#include <cstdint>

namespace p11ha::call_looks {

// On a virtual machine, waking a thread whose vCPU went idle costs 100-250 us (the host has to
// run the vCPU again; docs/BENCHMARKS.md), more than a SoftHSM ECDSA signature, and every member
// call is a hand-off to a worker and back. So while a CPU is free, each side looks for the
// other's signal instead of sleeping: the caller for as long as its kind of call usually takes,
// the worker for the next call of a caller that was looking. It does not yield while it looks:
// on a busy machine a yield can cost a whole scheduler slice (milliseconds). With one CPU
// nobody looks: the side looked for needs that CPU to answer.
constexpr auto kSpin = std::chrono::microseconds(250);  // the shortest look
// Calls that usually take longer (a network HSM, RSA-4096) are waited for asleep: a wake-up is
// small beside them, and looking would hold a CPU for milliseconds.
constexpr std::int64_t kLooksBelowNs = 1'500'000;
// With no CPU free, a short look still pays for calls that answer in tens of microseconds (a
// digest, AES-GCM of a few KiB): a sleep would cost a wake-up several times as long. A worker
// looks this long for its next call; a caller twice the call's usual time, plus this. Slower
// calls are not looked for by either side then: the caller sleeps, and a worker looking for
// its next call would hold a CPU that the caller needs to wake up and post it (2-thread ECDSA
// on 2 vCPUs: 0.904 of direct with the look, 0.991 without; docs/BENCHMARKS.md).
constexpr auto kBriefLook = std::chrono::microseconds(20);
constexpr std::int64_t kBriefCallNs = 50'000;

// How long a caller looks for the answer to a call that usually takes `typical_ns`, with
// `cpus_busy` of p11ha's threads already wanting a CPU for a hand-off. Zero: it sleeps at once.
std::chrono::microseconds CallerLook(std::int64_t typical_ns, int cpus_busy, int usable_cpus);
// How long a worker that has just answered looks for its next job. `busy_at_post` is what the
// caller counted as busy when it posted the job, `given_back` what of it the caller gives back
// at once (it was looking for the answer).
std::chrono::microseconds WorkerLook(std::int64_t typical_ns, int busy_at_post, int given_back, int usable_cpus);

// The CPUs this process may run on: those of its main thread, which is what `taskset` and a
// cpuset set for a whole process. A thread the application pinned to one CPU does not narrow
// it. Read once.
int ProcessCpus();
// Gives the calling thread the process's CPUs. A worker is started by whichever application
// thread first needed it, and would otherwise inherit that thread's pin: a caller pinned to
// one CPU would then look for an answer that its own CPU has to compute.
void AdoptProcessCpus();

}  // namespace p11ha::call_looks
