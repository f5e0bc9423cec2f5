// SPDX-License-Identifier: Apache-2.0
// Files, processes, farms, configs and the module itself; keys.cpp has the PKCS#11 and OpenSSL
// helpers.
#include "support.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

#include "tests/fakes/test_member.h"

extern char** environ;

namespace p11ha::module_test {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

void RequireRun(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
  const CommandResult result = Run(argv, env);
  INFO(argv[0] << " said: " << result.output);
  REQUIRE(result.exit_code == 0);
}

// A cluster of two or more members refuses to create keys without a replication domain key
// (DESIGN.md "Replication"); CMake names the CLI that installs one in P11HA_CLI.
std::vector<std::string> DomainOption(int members) {
  const std::string cli = Env("P11HA_CLI");
  if (cli.empty() || members < 2) return {};
  return {"--domain", cli};
}

}  // namespace

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "p11ha-module-XXXXXX").string();
  REQUIRE(mkdtemp(pattern.data()) != nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  if (!Env("P11HA_KEEP_TEST_DIRS").empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

CommandResult Run(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  CommandResult result;
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    bool replaced = false;
    for (const std::string& extra : env) {
      const std::size_t name_length = extra.find('=') + 1;  // "NAME="
      replaced = replaced || entry.compare(0, name_length, extra, 0, name_length) == 0;
    }
    if (!replaced) environment.push_back(entry);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const std::string& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  char output_path[] = "/tmp/p11ha-module-run-XXXXXX";
  const int output = mkstemp(output_path);
  if (output < 0) return result;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, output, 1);
  posix_spawn_file_actions_adddup2(&actions, output, 2);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (spawned == 0) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  } else {
    result.output = "cannot start " + argv[0] + ": " + std::strerror(spawned) + "\n";
  }
  close(output);
  result.output += ReadFile(output_path);
  unlink(output_path);
  return result;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  REQUIRE(out.good());
}

void WriteFileAtomically(const std::string& path, const std::string& text) {
  WriteFile(path + ".tmp", text);
  REQUIRE(std::rename((path + ".tmp").c_str(), path.c_str()) == 0);
}

bool Contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

std::string LineWithAll(const std::string& text, const std::vector<std::string>& needles) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    bool all = true;
    for (const std::string& needle : needles) all = all && Contains(line, needle);
    if (all) return line;
  }
  return "";
}

void MakeFarm(const std::string& dir, int members) {
  std::vector<std::string> argv = {P11HA_FARM_SCRIPT, dir, std::to_string(members)};
  for (const std::string& option : DomainOption(members)) argv.push_back(option);
  RequireRun(argv);
  // SoftHSM reads it at C_Initialize, in this process, through p11ha.
  setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
}

void MakeTokens(const std::string& dir, int members, const std::string& user_pin) {
  std::filesystem::create_directories(dir + "/tokens");
  const std::string conf = dir + "/softhsm2.conf";
  WriteFile(conf, "directories.tokendir = " + dir + "/tokens\nobjectstore.backend = file\n" +
                      "log.level = ERROR\nslots.removable = false\n");
  for (int i = 1; i <= members; ++i) {
    RequireRun({"softhsm2-util", "--init-token", "--free", "--label", "m" + std::to_string(i),
                "--so-pin", "12345678", "--pin", user_pin},
               {"SOFTHSM2_CONF=" + conf});
  }
  setenv("SOFTHSM2_CONF", conf.c_str(), 1);
  const std::vector<std::string> domain = DomainOption(members);
  if (domain.empty()) return;
  // make-farm.sh's --domain assumes PIN 1234: the same ceremony with this PIN.
  WriteFile(dir + "/domain-user.pin", user_pin);
  WriteFile(dir + "/domain-so.pin", "12345678");
  ConfigSpec spec;
  spec.members = FarmMembers(members);
  spec.log_file = dir + "/domain-create.log";
  WriteFile(dir + "/domain.toml", RenderConfig(spec));
  RequireRun({domain[1], "domain", "create", "--shares", "3", "--threshold", "2", "--out", dir + "/shares",
              "--so-pin-file", dir + "/domain-so.pin", "--pin-file", dir + "/domain-user.pin",
              "--config", dir + "/domain.toml"},
             {"SOFTHSM2_CONF=" + conf});
}

void StageMembers(const std::string& dir, int members) {
  std::vector<std::string> argv = {P11HA_STAGE_TEST_MEMBERS, dir, std::to_string(members),
                                   P11HA_TEST_MEMBER_SO};
  for (const std::string& option : DomainOption(members)) argv.push_back(option);
  RequireRun(argv);
}

std::string MemberSo(const std::string& dir, int i) {
  return dir + "/member-" + std::to_string(i) + ".so";
}

std::string MemberConf(const std::string& dir, int i) {
  return dir + "/softhsm2-" + std::to_string(i) + ".conf";
}

std::string RenderConfig(const ConfigSpec& spec) {
  std::ostringstream out;
  out << "[cluster]\nlabel = \"" << spec.label << "\"\nslot_id = " << spec.slot_id << "\n\n";
  for (const MemberSpec& member : spec.members) {
    out << "[[member]]\nname = \"" << member.name << "\"\nmodule = \"" << member.module
        << "\"\ntoken = \"" << member.token << "\"\n\n";
  }
  out << "[balancing]\npolicy = \"" << spec.policy << "\"\n\n";
  if (!spec.quorum.empty()) out << "[replication]\nquorum = " << spec.quorum << "\n\n";
  out << "[health]\n";
  if (spec.probe_interval_ms != 0) out << "probe_interval_ms = " << spec.probe_interval_ms << "\n";
  if (spec.call_timeout_ms != 0) out << "call_timeout_ms = " << spec.call_timeout_ms << "\n";
  if (spec.replay_limit_bytes) out << "replay_limit_bytes = " << *spec.replay_limit_bytes << "\n";
  out << "\n";
  if (spec.catalog_max_age_ms) out << "[catalog]\nmax_age_ms = " << *spec.catalog_max_age_ms << "\n\n";
  out << "[log]\nlevel = \"" << spec.log_level << "\"\nfile = \"" << spec.log_file << "\"\n";
  return out.str();
}

void UseConfig(const std::string& path, const ConfigSpec& spec) {
  WriteFile(path, RenderConfig(spec));
  setenv("P11HA_CONFIG", path.c_str(), 1);
}

std::vector<MemberSpec> FarmMembers(int members) {
  std::vector<MemberSpec> specs;
  for (int i = 1; i <= members; ++i) {
    specs.push_back({"hsm-" + std::to_string(i), P11HA_SOFTHSM_MODULE,
                     "pkcs11:token=m" + std::to_string(i)});
  }
  return specs;
}

std::vector<MemberSpec> TestMembers(const std::string& dir, int members) {
  std::vector<MemberSpec> specs;
  for (int i = 1; i <= members; ++i) {
    specs.push_back(
        {"hsm-" + std::to_string(i), MemberSo(dir, i), "pkcs11:token=m" + std::to_string(i)});
  }
  return specs;
}

CK_FUNCTION_LIST* P11ha() {
  static CK_FUNCTION_LIST* functions = [] {
    void* library = dlopen(P11HA_MODULE_SO, RTLD_NOW | RTLD_LOCAL);
    INFO("dlopen " << P11HA_MODULE_SO << ": " << (library == nullptr ? dlerror() : "ok"));
    REQUIRE(library != nullptr);
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(library, "C_GetFunctionList"));
    REQUIRE(get_list != nullptr);
    CK_FUNCTION_LIST* list = nullptr;
    REQUIRE(get_list(&list) == CKR_OK);
    REQUIRE(list != nullptr);
    return list;
  }();
  return functions;
}

CK_RV Initialize(CK_FLAGS flags) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = flags;
  return P11ha()->C_Initialize(&args);
}

std::string RvText(CK_RV rv) {
  std::ostringstream out;
  out << "0x" << std::hex << std::setw(8) << std::setfill('0') << rv;
  return out.str();
}

Initialized::Initialized(CK_FLAGS flags) {
  const CK_RV rv = Initialize(flags);
  INFO("C_Initialize -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  active_ = true;
}

Initialized::~Initialized() {
  if (active_) P11ha()->C_Finalize(nullptr);
}

CK_RV Initialized::Finalize() {
  active_ = false;
  return P11ha()->C_Finalize(nullptr);
}

int MemberCount(const std::string& so_path, const char* function) {
  // RTLD_NOLOAD: the member p11ha loaded, never a fresh copy with counters at zero.
  void* library = dlopen(so_path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  INFO(so_path << " is not loaded in this process");
  REQUIRE(library != nullptr);
  auto count = reinterpret_cast<P11haTestMemberCountFn>(dlsym(library, "p11ha_test_member_count"));
  REQUIRE(count != nullptr);
  const int n = count(function);
  dlclose(library);
  return n;
}

void SetMemberFault(const std::string& so_path, const std::string& spec) {
  WriteFileAtomically(so_path + ".ctl", spec + "\n");
}

int ThreadCount() {
  int count = 0;
  DIR* tasks = opendir("/proc/self/task");
  REQUIRE(tasks != nullptr);
  while (dirent* entry = readdir(tasks)) count += entry->d_name[0] != '.';
  closedir(tasks);
  return count;
}

bool ThreadCountSettlesTo(int expected) {
  return WaitFor([&] { return ThreadCount() == expected; }, std::chrono::milliseconds(500));
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

StderrCapture::StderrCapture(std::string path) : path_(std::move(path)) {
  std::fflush(stderr);
  saved_ = dup(2);
  const int file = open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(saved_ >= 0);
  REQUIRE(file >= 0);
  dup2(file, 2);
  close(file);
}

StderrCapture::~StderrCapture() { Stop(); }

std::string StderrCapture::Stop() {
  if (saved_ >= 0) {
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  return ReadFile(path_);
}

}  // namespace p11ha::module_test
