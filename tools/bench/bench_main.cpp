// SPDX-License-Identifier: Apache-2.0
// p11ha-bench: what p11ha costs, measured against the member used directly in the same run
// (README "Benchmarks", docs/BENCHMARKS.md). Each subcommand lives in its own file. The measured
// runs are processes of this executable (a subcommand "used by" it), so that p11ha and the token
// measured directly never share a process or a SoftHSM instance; `handoff` alone measures in
// process, with no member.
#include <CLI/CLI.hpp>
#include <exception>
#include <filesystem>
#include <iostream>

#include "bench_common.h"

namespace p11ha::bench {
namespace {

int Main(int argc, char** argv) {
  CLI::App app{"p11ha-bench: p11ha measured against its member used directly, in the same run"};
  app.require_subcommand(1);
  Commands commands;
  RegisterOverhead(app, commands);
  RegisterReplication(app, commands);
  RegisterCatchup(app, commands);
  RegisterCatalog(app, commands);
  RegisterScaling(app, commands);
  RegisterHandoff(app, commands);
  CLI11_PARSE(app, argc, argv);
  try {
    const std::string self = fs::canonical("/proc/self/exe");
    for (const auto& [command, runner] : commands)
      if (command->parsed()) return runner(self);
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "p11ha-bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace p11ha::bench

int main(int argc, char** argv) { return p11ha::bench::Main(argc, argv); }
