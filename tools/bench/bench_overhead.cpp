// SPDX-License-Identifier: Apache-2.0
// `overhead` stages a SoftHSM token, then runs each operation alternately on that token directly
// and through p11ha with it as the only member, each side in a process of its own that measures
// on cue, and reports medians of the rounds.
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "bench_workload.h"
#include "cpu_placement.h"

namespace p11ha::bench {
namespace {

constexpr const char* kTokenLabel = "bench";
constexpr const char* kClusterLabel = "ha-bench";

struct Sample {
  double throughput = 0, p50 = 0, p99 = 0;
};

struct OverheadOptions {
  double seconds = 0.5;
  int rounds = 16;  // a multiple of 4: each CPU placement sees both orders of the sides
  std::vector<int> threads = {1, 2};
  std::vector<std::string> operations;
  std::string softhsm = kSoftHsmModule;
  std::string p11ha = P11HA_MODULE_PATH;
  std::string out;
  bool unpinned = false;  // --no-pin
};

// A SoftHSM token with the bench's keys, and a p11ha config with it as the only member.
struct StagedToken {
  Farm farm;
  fs::path p11ha_conf;
};

StagedToken MakeStage(const fs::path& dir, const OverheadOptions& options, const std::string& self) {
  StagedToken stage{MakeFarm(dir), dir / "p11ha.toml"};
  InitToken(stage.farm, kTokenLabel);
  Run({self, "stage", "--module", options.softhsm, "--token", kTokenLabel, "--pin-file", stage.farm.pin_file},
      stage.farm.env());
  WriteConfig(stage.p11ha_conf, kClusterLabel, {{"hsm-1", kTokenLabel}}, options.softhsm, dir / "p11ha.log");
  return stage;
}

// kDirectHandoff: the token directly, each operation handed to a partner thread and back with
// nothing but two atomics (BareHandoff): the floor of any design that runs member calls on
// threads of their own, as p11ha does to keep its call timeout. Both sides spin while every
// caller leaves a CPU free for its partner; else they sleep, as a hand-off must then take
// the caller off its CPU (kDirectHandoffAsleep).
enum class Path { kDirect, kP11ha, kP11haInline, kDirectHandoff, kDirectHandoffAsleep };

// One side of the comparison, loaded once in its own process and measured on each cue.
std::unique_ptr<CuedChild> StartSide(const std::string& self, const StagedToken& stage, Path path,
                                     const OverheadOptions& options, const std::string& operation, int threads) {
  const bool through_p11ha = path == Path::kP11ha || path == Path::kP11haInline;
  Env env = stage.farm.env();
  if (through_p11ha) env["P11HA_CONFIG"] = stage.p11ha_conf;
  std::vector<std::string> argv = {self, "measure", "--module", through_p11ha ? options.p11ha : options.softhsm,
                                   "--token", through_p11ha ? kClusterLabel : kTokenLabel, "--pin-file",
                                   stage.farm.pin_file, "--op", operation, "--threads", std::to_string(threads),
                                   "--seconds", Fixed(options.seconds, 3), "--on-cue"};
  if (path == Path::kP11haInline) argv.push_back("--no-library-threads");
  if (path == Path::kDirectHandoff || path == Path::kDirectHandoffAsleep) argv.push_back("--bare-handoff");
  if (path == Path::kDirectHandoffAsleep) argv.push_back("--handoff-asleep");
  if (path == Path::kP11ha) argv.push_back("--module-threads-call");
  auto side = std::make_unique<CuedChild>(argv, env);
  // One side loads at a time: every C_Login rewrites SoftHSM's token file, and an instance
  // starting meanwhile was seen to miss the token (DESIGN.md, the SoftHSM facts).
  if (std::string ready = side->ReadLine(); ready != "ready")
    throw std::runtime_error("a measuring run said '" + ready + "' where it should be ready");
  return side;
}

Sample Measure(CuedChild& side, bool through_p11ha, const std::string& operation,
               const std::optional<Placement>& placement) {
  auto fields = ParseLine(side.Cue(CueFor(placement)));
  if (fields["errors"] != "0")
    throw std::runtime_error(operation + (through_p11ha ? " through p11ha" : " directly") + ": " + fields["errors"] +
                             " errors, the first " + fields["first_error"]);
  Sample sample;
  sample.throughput = std::stod(fields["operations"]) / std::stod(fields["seconds"]);
  sample.p50 = std::stod(fields["p50_us"]);
  sample.p99 = std::stod(fields["p99_us"]);
  return sample;
}

int Overhead(const OverheadOptions& options, const std::string& self) {
  TempDir dir;
  const StagedToken stage = MakeStage(dir.path(), options, self);
  const std::vector<int> cpus = UsableCpuList();
  std::ostringstream report, cpu_speeds;
  report << "| operation | threads | direct ops/s | p11ha ops/s | ratio | ratio, no call workers | floor: direct, handed "
            "off | direct p50 / p99 (µs) | p11ha p50 / p99 (µs) |\n"
         << "|---|---|---|---|---|---|---|---|---|\n";
  for (const Operation& operation : Operations()) {
    if (!options.operations.empty() &&
        std::find(options.operations.begin(), options.operations.end(), operation.name) == options.operations.end())
      continue;
    for (int threads : options.threads) {
      std::map<int, std::vector<double>> direct_on_cpu;  // 1 thread, placed: the work CPU's speed
      std::vector<double> ratio, inline_ratio, floor_ratio, direct_tps, p11ha_tps, direct_p50, direct_p99, p11ha_p50,
          p11ha_p99;
      auto direct_side = StartSide(self, stage, Path::kDirect, options, operation.name, threads);
      auto p11ha_side = StartSide(self, stage, Path::kP11ha, options, operation.name, threads);
      auto inline_side = StartSide(self, stage, Path::kP11haInline, options, operation.name, threads);
      // With no CPU left for a partner, spinning partners would only measure one another.
      const bool floor_spins = 2 * static_cast<std::size_t>(threads) <= cpus.size();
      std::unique_ptr<CuedChild> floor_side =
          StartSide(self, stage, floor_spins ? Path::kDirectHandoff : Path::kDirectHandoffAsleep, options,
                    operation.name, threads);
      struct Taken {
        CuedChild* side;
        bool through_p11ha;
        Sample sample;
      };
      // Measured in this order in even rounds and in reverse in odd ones, which spreads the
      // machine's drift over all sides.
      std::vector<Taken> sides = {{direct_side.get(), false, {}}, {p11ha_side.get(), true, {}},
                                  {inline_side.get(), true, {}}};
      if (floor_side) sides.push_back({floor_side.get(), false, {}});
      const std::optional<Placement> no_placement;
      for (int round = 0; round < options.rounds; ++round) {
        const std::optional<Placement> placement =
            threads == 1 && !options.unpinned ? PlacementForRound(cpus, round) : no_placement;
        const auto take = [&](Taken& taken) {
          taken.sample = Measure(*taken.side, taken.through_p11ha, operation.name, placement);
        };
        if (round % 2 == 0)
          std::for_each(sides.begin(), sides.end(), take);
        else
          std::for_each(sides.rbegin(), sides.rend(), take);
        const Sample& direct = sides[0].sample;
        if (placement) direct_on_cpu[placement->work_cpu].push_back(direct.throughput);
        const Sample& via = sides[1].sample;
        const Sample& inline_via = sides[2].sample;
        if (floor_side) floor_ratio.push_back(sides[3].sample.throughput / direct.throughput);
        ratio.push_back(via.throughput / direct.throughput);
        inline_ratio.push_back(inline_via.throughput / direct.throughput);
        direct_tps.push_back(direct.throughput);
        p11ha_tps.push_back(via.throughput);
        direct_p50.push_back(direct.p50);
        direct_p99.push_back(direct.p99);
        p11ha_p50.push_back(via.p50);
        p11ha_p99.push_back(via.p99);
      }
      report << "| " << operation.name << " | " << threads << " | " << Fixed(Median(direct_tps), 0) << " | "
             << Fixed(Median(p11ha_tps), 0) << " | " << Fixed(Median(ratio), 3) << " | "
             << Fixed(Median(inline_ratio), 3) << " | " << (floor_ratio.empty() ? "-" : Fixed(Median(floor_ratio), 3))
             << " | " << Fixed(Median(direct_p50), 1) << " / " << Fixed(Median(direct_p99), 1) << " | "
             << Fixed(Median(p11ha_p50), 1) << " / " << Fixed(Median(p11ha_p99), 1) << " |\n";
      std::cerr << "p11ha-bench: " << operation.name << ", " << threads << " thread(s): ratio "
                << Fixed(Median(ratio), 3) << "\n";
      for (const auto& [cpu, throughputs] : direct_on_cpu)
        cpu_speeds << operation.name << " directly, 1 thread, calls on CPU " << cpu << ": "
                   << Fixed(Median(throughputs), 0) << " ops/s (median of " << throughputs.size() << " rounds)\n";
    }
  }
  report << "\nMedians of " << options.rounds << " alternating rounds of " << Fixed(options.seconds, 2)
         << " s each, each side loaded once in its own process; ratio = p11ha ops/s over direct ops/s, taken "
            "per round. \"No call workers\": p11ha "
            "initialised with CKF_LIBRARY_CANT_CREATE_OS_THREADS, so member calls run on the caller's thread "
            "(no call timeout); the difference is the hand-off to a call worker. \"Floor\": the token directly, each "
            "operation handed to a partner thread and back through two atomics: both spinning when each thread "
            "leaves a CPU free for its partner (1 thread, 2 CPUs or more), else both asleep in futex, as a hand-off "
            "must then take the caller off its CPU. What any hand-off of member calls to threads of their own costs "
            "at least.\n";
  if (!options.unpinned && cpus.size() >= 2)
    report << "\nWith 1 thread, each round runs every side's module calls on the same CPU, and the application "
              "thread, where the calls run elsewhere, on another; the CPUs trade places every two rounds "
              "(--no-pin: wherever the scheduler puts them). The module used directly, by the CPU its calls ran on:\n"
           << cpu_speeds.str();
  Emit(report.str(), options.out);
  return 0;
}

}  // namespace

void RegisterOverhead(CLI::App& app, Commands& commands) {
  auto overhead = std::make_shared<OverheadOptions>();
  auto* overhead_cmd = app.add_subcommand("overhead", "p11ha with one SoftHSM member against that token directly");
  overhead_cmd->add_option("--seconds", overhead->seconds, "length of each run")->check(CLI::PositiveNumber);
  overhead_cmd->add_option("--rounds", overhead->rounds, "alternating rounds per figure")->check(CLI::Range(1, 99));
  overhead_cmd->add_option("--threads", overhead->threads, "thread counts")->delimiter(',');
  overhead_cmd->add_option("--ops", overhead->operations, "operations (default: all)")->delimiter(',');
  overhead_cmd->add_option("--softhsm", overhead->softhsm, "SoftHSM's module");
  overhead_cmd->add_option("--p11ha", overhead->p11ha, "libp11ha.so");
  overhead_cmd->add_option("--out", overhead->out, "also write the table here");
  overhead_cmd->add_flag("--no-pin", overhead->unpinned,
                         "leave 1-thread rounds' threads wherever the scheduler puts them");
  commands.emplace_back(overhead_cmd, [overhead](const std::string& self) { return Overhead(*overhead, self); });

  auto spec = std::make_shared<WorkloadSpec>();
  auto pin_file = std::make_shared<std::string>();
  auto* measure_cmd = app.add_subcommand("measure", "one run of one operation (used by overhead)");
  measure_cmd->add_option("--module", spec->module)->required();
  measure_cmd->add_option("--token", spec->token_label)->required();
  measure_cmd->add_option("--pin-file", *pin_file)->required();
  measure_cmd->add_option("--op", spec->operation)->required();
  measure_cmd->add_option("--threads", spec->threads)->check(CLI::Range(1, 256));
  measure_cmd->add_option("--seconds", spec->seconds)->check(CLI::PositiveNumber);
  measure_cmd->add_flag("--no-library-threads", spec->no_library_threads);
  measure_cmd->add_flag("--bare-handoff", spec->bare_handoff, "hand each operation to a partner thread and back");
  measure_cmd->add_flag("--handoff-asleep", spec->handoff_asleep, "with --bare-handoff: both sides wait in futex");
  measure_cmd->add_flag("--module-threads-call", spec->module_threads_call,
                        "the module calls its token on threads of its own (placement pins those)");
  auto on_cue = std::make_shared<bool>(false);
  measure_cmd->add_flag("--on-cue", *on_cue, "measure once per line read from stdin, until it ends");
  commands.emplace_back(measure_cmd, [spec, pin_file, on_cue](const std::string&) {
    spec->pin = ReadPin(*pin_file);
    Workload workload(*spec);
    auto report = [](const WorkloadResult& result) {
      std::cout << "operations=" << result.operations << " seconds=" << Fixed(result.seconds, 6)
                << " p50_us=" << Fixed(result.p50_us, 2) << " p99_us=" << Fixed(result.p99_us, 2)
                << " errors=" << result.errors
                << " first_error=" << (result.first_error.empty() ? "-" : result.first_error) << std::endl;
    };
    if (!*on_cue) {
      report(workload.Measure(spec->seconds));
      return 0;
    }
    std::cout << "ready" << std::endl;
    for (std::string cue; std::getline(std::cin, cue);) report(workload.Measure(spec->seconds, PlacementOfCue(cue)));
    return 0;
  });

  auto* stage_cmd = app.add_subcommand("stage", "make the bench's keys on a fresh token (used by overhead)");
  stage_cmd->add_option("--module", spec->module)->required();
  stage_cmd->add_option("--token", spec->token_label)->required();
  stage_cmd->add_option("--pin-file", *pin_file)->required();
  commands.emplace_back(stage_cmd, [spec, pin_file](const std::string&) {
    Stage(spec->module, spec->token_label, ReadPin(*pin_file));
    return 0;
  });
}

}  // namespace p11ha::bench
