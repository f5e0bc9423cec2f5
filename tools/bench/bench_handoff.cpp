// SPDX-License-Identifier: Apache-2.0
// `handoff` measures what passing one member call to a call worker and back costs, with no
// member at all: null calls through CallExecutor::Run, against two threads passing a number back
// and forth through two atomics, the least any hand-off between CPUs can cost on this machine;
// and the same with both threads asleep in futex between calls, the least a hand-off costs when
// the caller must give up its CPU.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bare_handoff.h"
#include "bench_common.h"
#include "provider/member/call_executor.h"

namespace p11ha::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct HandoffOptions {
  int calls = 200'000;
  int rounds = 7;
  std::string out;
};

// Nanoseconds per round trip of a null call to another thread and back, with nothing but two
// atomics between them (BareHandoff).
double PingPong(int calls, HandoffWait wait) {
  const std::function<CK_RV()> null_call = [] { return CKR_OK; };
  BareHandoff handoff(null_call, wait);
  handoff();  // the partner runs: the clock may start
  const auto start = Clock::now();
  for (int i = 0; i < calls; ++i)
    if (handoff() != CKR_OK) throw std::runtime_error("a null call failed");
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() / calls;
}

// Nanoseconds per null call through the executor, as a member call goes (one call site).
double ThroughExecutor(CallExecutor& executor, int calls) {
  static const char kSite[] = "handoff";
  const CallJob job = CallJob::Of([]() -> CK_RV { return CKR_OK; });
  const auto start = Clock::now();
  for (int i = 0; i < calls; ++i)
    if (executor.Run(job, nullptr, std::nullopt, kSite) != CKR_OK) throw std::runtime_error("a null call failed");
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() / calls;
}

int Handoff(const HandoffOptions& options) {
  CallExecutor executor(std::chrono::milliseconds(5000));
  ThroughExecutor(executor, options.calls / 10);  // the worker exists and the site's average is known
  std::vector<double> bare, asleep, executed, ratio;
  for (int round = 0; round < options.rounds; ++round) {
    double b, e;
    if (round % 2 == 0) {
      b = PingPong(options.calls, HandoffWait::kSpin);
      e = ThroughExecutor(executor, options.calls);
    } else {
      e = ThroughExecutor(executor, options.calls);
      b = PingPong(options.calls, HandoffWait::kSpin);
    }
    // Far slower per call: a tenth of the calls.
    asleep.push_back(PingPong(std::max(1000, options.calls / 10), HandoffWait::kSleep));
    bare.push_back(b);
    executed.push_back(e);
    ratio.push_back(e / b);
  }
  std::ostringstream report;
  report << "| bare round trip (ns) | null call through the executor (ns) | executor / bare | bare round trip, "
            "both asleep (ns) |\n"
         << "|---|---|---|---|\n"
         << "| " << Fixed(Median(bare), 0) << " | " << Fixed(Median(executed), 0) << " | "
         << Fixed(Median(ratio), 2) << " | " << Fixed(Median(asleep), 0) << " |\n\n"
         << "Medians of " << options.rounds << " alternating rounds of " << options.calls
         << " round trips each; per round, executor: " << Join(executed, 0) << "; bare: " << Join(bare, 0) << ".\n";
  Emit(report.str(), options.out);
  return 0;
}

}  // namespace

void RegisterHandoff(CLI::App& app, Commands& commands) {
  auto options = std::make_shared<HandoffOptions>();
  auto* command = app.add_subcommand("handoff", "a null member call through a call worker, against a bare round trip");
  command->add_option("--calls", options->calls, "round trips per round")->check(CLI::Range(1000, 100'000'000));
  command->add_option("--rounds", options->rounds, "alternating rounds")->check(CLI::Range(1, 99));
  command->add_option("--out", options->out, "also write the table here");
  commands.emplace_back(command, [options](const std::string&) { return Handoff(*options); });
}

}  // namespace p11ha::bench
