// SPDX-License-Identifier: Apache-2.0
// The orchestrating side of p11ha-bench, shared by its subcommands: child processes, SoftHSM
// token farms in a temp dir, p11ha configs over them, and the statistics of the report.
#pragma once

#include <spawn.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace p11ha::bench {

namespace fs = std::filesystem;

inline constexpr const char* kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr const char* kUserPin = "1234";
inline constexpr const char* kSoPin = "5678";

// A subcommand's work once the command line is parsed; `self` is this executable, which every
// measured run starts afresh. Returns the exit status.
using Runner = std::function<int(const std::string& self)>;
using Commands = std::vector<std::pair<CLI::App*, Runner>>;

// Each file registers its own subcommands (the public one and the runs it starts).
void RegisterOverhead(CLI::App& app, Commands& commands);
void RegisterReplication(CLI::App& app, Commands& commands);
void RegisterCatchup(CLI::App& app, Commands& commands);
void RegisterCatalog(CLI::App& app, Commands& commands);
void RegisterScaling(CLI::App& app, Commands& commands);
void RegisterHandoff(CLI::App& app, Commands& commands);

using Env = std::map<std::string, std::string>;

// posix_spawnp of argv with `env` added to this process's environment; throws when it cannot.
pid_t Spawn(const std::vector<std::string>& argv, const Env& env, const posix_spawn_file_actions_t* actions,
            const posix_spawnattr_t* attributes);

// Runs argv with `env` added to this process's environment and stdin on /dev/null, so that
// nothing it starts can wait for a prompt; returns its stdout. Throws when it fails, with what
// it wrote to stderr left on ours and the end of its stdout in the message.
std::string Run(const std::vector<std::string>& argv, const Env& env);

// A child that measures on cue and stays loaded in between, so that rounds can alternate
// between processes within a fraction of a second: the machine's drift, which moves a run's
// figure by 10 % from one second to the next here, then weighs on both sides of a ratio alike.
// Cue() writes a line to its stdin and returns the line it prints in answer.
class CuedChild {
 public:
  CuedChild(const std::vector<std::string>& argv, const Env& env);
  ~CuedChild();  // closes its stdin, which ends it, and reaps it
  CuedChild(const CuedChild&) = delete;
  CuedChild& operator=(const CuedChild&) = delete;

  std::string Cue(const std::string& line = "go");
  // The next line it prints unprompted (its "ready" once loaded).
  std::string ReadLine();

 private:
  std::string what_;  // the command, for errors
  pid_t pid_ = -1;
  int to_child_ = -1, from_child_ = -1;
  std::string pending_;  // read beyond the last answer's newline
};

// Run, timed by wall clock from the spawn to the exit; seconds.
double RunTimed(const std::vector<std::string>& argv, const Env& env, std::string* out = nullptr);

// "a=1 b=2" as printed by the measuring runs.
std::map<std::string, std::string> ParseLine(const std::string& line);
// "1.5,2,3" into numbers.
std::vector<double> ParseList(const std::string& text);
// The field, or an exception naming what printed the line without it.
const std::string& Field(const std::map<std::string, std::string>& fields, const std::string& name);

std::string ReadPin(const std::string& path);

double Median(std::vector<double> values);
// Nearest rank below q·(n-1), as the `measure` runs compute theirs.
double Percentile(std::vector<double> values, double q);
std::string Fixed(double value, int digits);
std::string Join(const std::vector<double>& values, int digits);

// Prints the report and, with --out, writes it there too.
void Emit(const std::string& report, const std::string& out);

// Removes its directory, whatever way the subcommand ends.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A SoftHSM token directory with its own softhsm2.conf: a separate SoftHSM "installation".
// SoftHSM reads every token of its directory at C_Initialize, so tokens that must not weigh on
// a measured process live in a farm of their own.
struct Farm {
  fs::path dir, softhsm_conf, pin_file, so_pin_file;
  Env env() const { return {{"SOFTHSM2_CONF", softhsm_conf.string()}}; }
};

// Creates DIR/tokens, DIR/softhsm2.conf and the PIN files (kUserPin, kSoPin).
Farm MakeFarm(const fs::path& dir);
void InitToken(const Farm& farm, const std::string& label);

struct MemberSpec {
  std::string name;
  std::string token_label;
};

// A p11ha config over SoftHSM tokens of one farm, members in the given order; default quorum.
void WriteConfig(const fs::path& path, const std::string& cluster_label, const std::vector<MemberSpec>& members,
                 const std::string& softhsm, const fs::path& log_file);

// `p11ha domain create` with one share over `config` (every member gets the same domain key);
// the share is left in `shares_dir`/share-1 for `domain install`.
void CreateDomain(const std::string& cli, const Farm& farm, const fs::path& config, const fs::path& shares_dir);

}  // namespace p11ha::bench
