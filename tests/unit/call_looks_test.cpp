// SPDX-License-Identifier: Apache-2.0
#include "provider/member/call_looks.h"

#include <catch2/catch.hpp>

#include <sched.h>

#include <chrono>
#include <optional>
#include <thread>

#include "provider/member/call_executor.h"

namespace p11ha {
namespace {

using std::chrono::microseconds;
using namespace call_looks;

constexpr std::int64_t kDigestNs = 1'000;      // a SoftHSM digest of 1 KiB
constexpr std::int64_t kSignatureNs = 73'000;  // a SoftHSM ECDSA P-256 signature
constexpr std::int64_t kRemoteNs = 2'000'000;  // a network HSM's round trip

TEST_CASE("call looks: with one CPU neither side looks, whatever the call") {
  for (std::int64_t typical : {std::int64_t{0}, kDigestNs, kSignatureNs}) {
    CHECK(CallerLook(typical, 0, 1) == microseconds(0));
    CHECK(WorkerLook(typical, 2, 2, 1) == microseconds(0));
    CHECK(WorkerLook(typical, 1, 0, 1) == microseconds(0));
  }
}

TEST_CASE("call looks: with a CPU free both sides look, for as long as the call usually takes") {
  CHECK(CallerLook(kSignatureNs, 0, 2) == kSpin + microseconds(2 * kSignatureNs / 1000));
  CHECK(CallerLook(kDigestNs, 0, 2) == kSpin + microseconds(2 * kDigestNs / 1000));
  // The caller looked, and gives its CPU back as it takes the answer: one CPU stays free.
  CHECK(WorkerLook(kSignatureNs, 2, 2, 2) == kSpin);
}

TEST_CASE("call looks: with every CPU busy only quick calls are looked for, briefly, by either side") {
  CHECK(CallerLook(kDigestNs, 1, 2) == kBriefLook + microseconds(2 * kDigestNs / 1000));
  CHECK(CallerLook(kSignatureNs, 1, 2) == microseconds(0));
  CHECK(WorkerLook(kDigestNs, 3, 0, 2) == kBriefLook);
  CHECK(WorkerLook(kSignatureNs, 3, 0, 2) == microseconds(0));
}

TEST_CASE("call looks: calls slower than a wake-up are waited for asleep") {
  CHECK(CallerLook(kRemoteNs, 0, 8) == microseconds(0));
  CHECK(WorkerLook(kRemoteNs, 2, 2, 8) == microseconds(0));
}

int CpusOfThisThread() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : -1;
}

std::optional<int> FirstProcessCpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return std::nullopt;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) return cpu;
  return std::nullopt;
}

TEST_CASE("call looks: a worker started by a caller pinned to one CPU runs on all the process's CPUs") {
  const int process_cpus = ProcessCpus();
  REQUIRE(process_cpus == CpusOfThisThread());  // Catch2 runs on the main thread
  const std::optional<int> first = FirstProcessCpu();
  REQUIRE(first);
  std::optional<CK_RV> worker_cpus;
  int caller_cpus = 0;
  // The caller is a thread of its own, pinned as an application may pin its threads; the
  // executor's first call starts the worker from it.
  std::thread caller([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(*first, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) return;
    caller_cpus = CpusOfThisThread();
    CallExecutor executor(std::chrono::milliseconds(2000));
    worker_cpus = executor.Run(CallJob::Of([] { return static_cast<CK_RV>(CpusOfThisThread()); }));
  });
  caller.join();
  REQUIRE(caller_cpus == 1);
  REQUIRE(worker_cpus);
  CHECK(*worker_cpus == static_cast<CK_RV>(process_cpus));
}

}  // namespace
}  // namespace p11ha
