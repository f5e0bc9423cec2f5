// SPDX-License-Identifier: Apache-2.0
// p11ha-bench: what p11ha costs, measured against the member used directly in the same run
// (README "Benchmarks", docs/BENCHMARKS.md). `overhead` stages a SoftHSM token, then runs each
// operation alternately on that token directly and through p11ha with it as the only member,
// each run in a fresh process, and reports medians of the rounds.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_workload.h"

extern char** environ;

namespace p11ha::bench {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTokenLabel = "bench";
constexpr const char* kClusterLabel = "ha-bench";

std::string ReadPin(const std::string& path) {
  std::ifstream in(path);
  std::string pin;
  if (!in || !std::getline(in, pin)) throw std::runtime_error("cannot read a PIN from " + path);
  return pin;
}

// Runs argv with `env` added to this process's environment; returns its stdout. Throws when it
// fails, with what it wrote to stderr left on ours.
std::string Run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    if (!env.contains(entry.substr(0, entry.find('=')))) environment.push_back(entry);
  }
  for (const auto& [name, value] : env) environment.push_back(name + "=" + value);
  std::vector<char*> args, envp;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  for (const std::string& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
  args.push_back(nullptr);
  envp.push_back(nullptr);

  int out[2];
  if (pipe(out) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (spawned != 0) {
    close(out[0]);
    throw std::runtime_error("cannot run " + argv[0]);
  }
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = read(out[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(argv[0] + " " + argv[1] + " failed");
  return text;
}

std::map<std::string, std::string> ParseLine(const std::string& line) {
  std::map<std::string, std::string> fields;
  std::istringstream in(line);
  for (std::string field; in >> field;) {
    auto eq = field.find('=');
    if (eq != std::string::npos) fields[field.substr(0, eq)] = field.substr(eq + 1);
  }
  return fields;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

std::string Fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

struct Sample {
  double throughput = 0, p50 = 0, p99 = 0;
};

struct OverheadOptions {
  double seconds = 2;
  int rounds = 5;
  std::vector<int> threads = {1, 2};
  std::vector<std::string> operations;
  std::string softhsm = "/usr/lib/softhsm/libsofthsm2.so";
  std::string p11ha = P11HA_MODULE_PATH;
  std::string out;
};

// A SoftHSM token with the bench's keys, and a p11ha config with it as the only member.
struct StagedToken {
  fs::path dir, softhsm_conf, p11ha_conf, pin_file;
};

StagedToken MakeStage(const OverheadOptions& options, const std::string& self) {
  StagedToken stage;
  char pattern[] = "/tmp/p11ha-bench.XXXXXX";
  if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
  stage.dir = pattern;
  fs::create_directories(stage.dir / "tokens");
  stage.softhsm_conf = stage.dir / "softhsm2.conf";
  std::ofstream(stage.softhsm_conf) << "directories.tokendir = " << (stage.dir / "tokens").string()
                                    << "\nobjectstore.backend = file\nlog.level = ERROR\n";
  stage.pin_file = stage.dir / "user.pin";
  std::ofstream(stage.pin_file) << "1234\n";
  const std::map<std::string, std::string> env = {{"SOFTHSM2_CONF", stage.softhsm_conf}};
  Run({"softhsm2-util", "--init-token", "--free", "--label", kTokenLabel, "--pin", "1234", "--so-pin", "5678"}, env);
  Run({self, "stage", "--module", options.softhsm, "--token", kTokenLabel, "--pin-file", stage.pin_file}, env);
  stage.p11ha_conf = stage.dir / "p11ha.toml";
  std::ofstream(stage.p11ha_conf) << "[cluster]\nlabel = \"" << kClusterLabel << "\"\nslot_id = 0\n\n"
                                  << "[[member]]\nname = \"hsm-1\"\nmodule = \"" << options.softhsm
                                  << "\"\ntoken = \"pkcs11:token=" << kTokenLabel << "\"\n\n"
                                  << "[log]\nlevel = \"warn\"\nfile = \"" << (stage.dir / "p11ha.log").string()
                                  << "\"\n";
  return stage;
}

enum class Path { kDirect, kP11ha, kP11haInline };

Sample Measure(const std::string& self, const StagedToken& stage, Path path, const OverheadOptions& options,
               const std::string& operation, int threads) {
  const bool through_p11ha = path != Path::kDirect;
  std::map<std::string, std::string> env = {{"SOFTHSM2_CONF", stage.softhsm_conf}};
  if (through_p11ha) env["P11HA_CONFIG"] = stage.p11ha_conf;
  std::vector<std::string> argv = {self, "measure", "--module", through_p11ha ? options.p11ha : options.softhsm,
                                   "--token", through_p11ha ? kClusterLabel : kTokenLabel, "--pin-file",
                                   stage.pin_file, "--op", operation, "--threads", std::to_string(threads),
                                   "--seconds", Fixed(options.seconds, 3)};
  if (path == Path::kP11haInline) argv.push_back("--no-library-threads");
  auto fields = ParseLine(Run(argv, env));
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
  const StagedToken stage = MakeStage(options, self);
  std::ostringstream report;
  report << "| operation | threads | direct ops/s | p11ha ops/s | ratio | ratio, no call workers | direct p50 / p99 (µs) "
            "| p11ha p50 / p99 (µs) |\n"
         << "|---|---|---|---|---|---|---|---|\n";
  for (const Operation& operation : Operations()) {
    if (!options.operations.empty() &&
        std::find(options.operations.begin(), options.operations.end(), operation.name) == options.operations.end())
      continue;
    for (int threads : options.threads) {
      std::vector<double> ratio, inline_ratio, direct_tps, p11ha_tps, direct_p50, direct_p99, p11ha_p50, p11ha_p99;
      for (int round = 0; round < options.rounds; ++round) {
        // Alternating the order spreads the machine's drift over all three.
        Sample direct, via, inline_via;
        if (round % 2 == 0) {
          direct = Measure(self, stage, Path::kDirect, options, operation.name, threads);
          via = Measure(self, stage, Path::kP11ha, options, operation.name, threads);
          inline_via = Measure(self, stage, Path::kP11haInline, options, operation.name, threads);
        } else {
          inline_via = Measure(self, stage, Path::kP11haInline, options, operation.name, threads);
          via = Measure(self, stage, Path::kP11ha, options, operation.name, threads);
          direct = Measure(self, stage, Path::kDirect, options, operation.name, threads);
        }
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
             << Fixed(Median(inline_ratio), 3) << " | " << Fixed(Median(direct_p50), 1) << " / " << Fixed(Median(direct_p99), 1) << " | "
             << Fixed(Median(p11ha_p50), 1) << " / " << Fixed(Median(p11ha_p99), 1) << " |\n";
      std::cerr << "p11ha-bench: " << operation.name << ", " << threads << " thread(s): ratio "
                << Fixed(Median(ratio), 3) << "\n";
    }
  }
  report << "\nMedians of " << options.rounds << " alternating rounds of " << Fixed(options.seconds, 1)
         << " s each; ratio = p11ha ops/s over direct ops/s, taken per round. \"No call workers\": p11ha "
            "initialised with CKF_LIBRARY_CANT_CREATE_OS_THREADS, so member calls run on the caller's thread "
            "(no call timeout); the difference is the hand-off to a call worker.\n";
  std::cout << report.str();
  if (!options.out.empty()) std::ofstream(options.out) << report.str();
  fs::remove_all(stage.dir);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"p11ha-bench: p11ha measured against its member used directly, in the same run"};
  app.require_subcommand(1);

  OverheadOptions overhead;
  auto* overhead_cmd = app.add_subcommand("overhead", "p11ha with one SoftHSM member against that token directly");
  overhead_cmd->add_option("--seconds", overhead.seconds, "length of each run")->check(CLI::PositiveNumber);
  overhead_cmd->add_option("--rounds", overhead.rounds, "alternating rounds per figure")->check(CLI::Range(1, 99));
  overhead_cmd->add_option("--threads", overhead.threads, "thread counts")->delimiter(',');
  overhead_cmd->add_option("--ops", overhead.operations, "operations (default: all)")->delimiter(',');
  overhead_cmd->add_option("--softhsm", overhead.softhsm, "SoftHSM's module");
  overhead_cmd->add_option("--p11ha", overhead.p11ha, "libp11ha.so");
  overhead_cmd->add_option("--out", overhead.out, "also write the table here");

  WorkloadSpec spec;
  std::string pin_file;
  auto* measure_cmd = app.add_subcommand("measure", "one run of one operation (used by overhead)");
  measure_cmd->add_option("--module", spec.module)->required();
  measure_cmd->add_option("--token", spec.token_label)->required();
  measure_cmd->add_option("--pin-file", pin_file)->required();
  measure_cmd->add_option("--op", spec.operation)->required();
  measure_cmd->add_option("--threads", spec.threads)->check(CLI::Range(1, 256));
  measure_cmd->add_option("--seconds", spec.seconds)->check(CLI::PositiveNumber);
  measure_cmd->add_flag("--no-library-threads", spec.no_library_threads);

  auto* stage_cmd = app.add_subcommand("stage", "make the bench's keys on a fresh token (used by overhead)");
  stage_cmd->add_option("--module", spec.module)->required();
  stage_cmd->add_option("--token", spec.token_label)->required();
  stage_cmd->add_option("--pin-file", pin_file)->required();

  CLI11_PARSE(app, argc, argv);
  try {
    const std::string self = fs::canonical("/proc/self/exe");
    if (*overhead_cmd) return Overhead(overhead, self);
    spec.pin = ReadPin(pin_file);
    if (*stage_cmd) {
      Stage(spec.module, spec.token_label, spec.pin);
      return 0;
    }
    WorkloadResult result = RunWorkload(spec);
    std::cout << "operations=" << result.operations << " seconds=" << Fixed(result.seconds, 6)
              << " p50_us=" << Fixed(result.p50_us, 2) << " p99_us=" << Fixed(result.p99_us, 2)
              << " errors=" << result.errors << " first_error=" << (result.first_error.empty() ? "-" : result.first_error)
              << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "p11ha-bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace p11ha::bench

int main(int argc, char** argv) { return p11ha::bench::Main(argc, argv); }
