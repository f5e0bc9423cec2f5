// SPDX-License-Identifier: Apache-2.0
#include "bench_common.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace p11ha::bench {
namespace {

// The last few lines only: a failed run of `p11ha sync` can print one line per object.
std::string Tail(const std::string& text, int lines) {
  std::size_t at = text.size();
  while (lines-- > 0 && at > 0) {
    at = text.rfind('\n', at - 1);
    if (at == std::string::npos) return text;
  }
  return text.substr(at + 1);
}

// The program and its subcommand, for messages about a run.
std::string CommandName(const std::vector<std::string>& argv) {
  return argv[0] + (argv.size() > 1 ? " " + argv[1] : std::string());
}

}  // namespace

pid_t Spawn(const std::vector<std::string>& argv, const Env& env, const posix_spawn_file_actions_t* actions,
            const posix_spawnattr_t* attributes) {
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
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], actions, attributes, args.data(), envp.data()) != 0)
    throw std::runtime_error("cannot run " + argv[0]);
  return pid;
}

std::string Run(const std::vector<std::string>& argv, const Env& env) {
  int out[2];
  if (pipe(out) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  try {
    pid = Spawn(argv, env, &actions, nullptr);
  } catch (const std::runtime_error&) {
    posix_spawn_file_actions_destroy(&actions);
    close(out[0]);
    close(out[1]);
    throw;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = read(out[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string what = CommandName(argv);
    what += WIFEXITED(status) ? " exited " + std::to_string(WEXITSTATUS(status)) : " was killed";
    if (!text.empty()) what += "; its output ended:\n" + Tail(text, 8);
    throw std::runtime_error(what);
  }
  return text;
}

CuedChild::CuedChild(const std::vector<std::string>& argv, const Env& env)
    : what_(CommandName(argv)) {
  // A child that died is reported by Cue(), not by SIGPIPE ending the bench.
  signal(SIGPIPE, SIG_IGN);
  int in[2], out[2];
  if (pipe(in) != 0) throw std::runtime_error("pipe failed");
  if (pipe(out) != 0) {
    close(in[0]);
    close(in[1]);
    throw std::runtime_error("pipe failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  for (int fd : {in[0], in[1], out[0], out[1]}) posix_spawn_file_actions_addclose(&actions, fd);
  try {
    pid_ = Spawn(argv, env, &actions, nullptr);
  } catch (const std::runtime_error&) {
    posix_spawn_file_actions_destroy(&actions);
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    throw;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(in[0]);
  close(out[1]);
  to_child_ = in[1];
  from_child_ = out[0];
}

CuedChild::~CuedChild() {
  close(to_child_);
  close(from_child_);
  int status = 0;
  waitpid(pid_, &status, 0);
}

std::string CuedChild::Cue(const std::string& line) {
  const std::string cue = line + "\n";
  if (write(to_child_, cue.data(), cue.size()) != static_cast<ssize_t>(cue.size()))
    throw std::runtime_error(what_ + " ended before its cue");
  return ReadLine();
}

std::string CuedChild::ReadLine() {
  for (;;) {
    if (auto end = pending_.find('\n'); end != std::string::npos) {
      std::string line = pending_.substr(0, end);
      pending_.erase(0, end + 1);
      return line;
    }
    char buffer[512];
    const ssize_t n = read(from_child_, buffer, sizeof buffer);
    if (n <= 0) throw std::runtime_error(what_ + " ended without answering");
    pending_.append(buffer, static_cast<std::size_t>(n));
  }
}

double RunTimed(const std::vector<std::string>& argv, const Env& env, std::string* out) {
  const auto start = std::chrono::steady_clock::now();
  std::string text = Run(argv, env);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (out != nullptr) *out = std::move(text);
  return seconds;
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

std::vector<double> ParseList(const std::string& text) {
  std::vector<double> values;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) values.push_back(std::stod(item));
  return values;
}

const std::string& Field(const std::map<std::string, std::string>& fields, const std::string& name) {
  auto it = fields.find(name);
  if (it == fields.end()) throw std::runtime_error("a measuring run printed no '" + name + "'");
  return it->second;
}

std::string ReadPin(const std::string& path) {
  std::ifstream in(path);
  std::string pin;
  if (!in || !std::getline(in, pin)) throw std::runtime_error("cannot read a PIN from " + path);
  return pin;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1))];
}

std::string Fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

std::string Join(const std::vector<double>& values, int digits) {
  std::string text;
  for (double value : values) text += (text.empty() ? "" : ",") + Fixed(value, digits);
  return text;
}

void Emit(const std::string& report, const std::string& out) {
  std::cout << report;
  if (out.empty()) return;
  std::ofstream file(out);
  file << report;
  if (!file) throw std::runtime_error("cannot write " + out);
}

TempDir::TempDir() {
  char pattern[] = "/tmp/p11ha-bench.XXXXXX";
  if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

Farm MakeFarm(const fs::path& dir) {
  Farm farm;
  farm.dir = dir;
  fs::create_directories(dir / "tokens");
  farm.softhsm_conf = dir / "softhsm2.conf";
  std::ofstream(farm.softhsm_conf) << "directories.tokendir = " << (dir / "tokens").string()
                                   << "\nobjectstore.backend = file\nlog.level = ERROR\n";
  farm.pin_file = dir / "user.pin";
  std::ofstream(farm.pin_file) << kUserPin << "\n";
  farm.so_pin_file = dir / "so.pin";
  std::ofstream(farm.so_pin_file) << kSoPin << "\n";
  fs::permissions(farm.pin_file, fs::perms::owner_read | fs::perms::owner_write);
  fs::permissions(farm.so_pin_file, fs::perms::owner_read | fs::perms::owner_write);
  return farm;
}

void InitToken(const Farm& farm, const std::string& label) {
  Run({"softhsm2-util", "--init-token", "--free", "--label", label, "--pin", kUserPin, "--so-pin", kSoPin},
      farm.env());
}

void WriteConfig(const fs::path& path, const std::string& cluster_label, const std::vector<MemberSpec>& members,
                 const std::string& softhsm, const fs::path& log_file) {
  std::ofstream config(path);
  config << "[cluster]\nlabel = \"" << cluster_label << "\"\nslot_id = 0\n\n";
  for (const MemberSpec& member : members)
    config << "[[member]]\nname = \"" << member.name << "\"\nmodule = \"" << softhsm << "\"\ntoken = \"pkcs11:token="
           << member.token_label << "\"\n\n";
  config << "[log]\nlevel = \"warn\"\nfile = \"" << log_file.string() << "\"\n";
  if (!config) throw std::runtime_error("cannot write " + path.string());
}

void CreateDomain(const std::string& cli, const Farm& farm, const fs::path& config, const fs::path& shares_dir) {
  Run({cli, "domain", "create", "--shares", "1", "--threshold", "1", "--out", shares_dir.string(), "--so-pin-file",
       farm.so_pin_file.string(), "--pin-file", farm.pin_file.string(), "--config", config.string()},
      farm.env());
}

}  // namespace p11ha::bench
