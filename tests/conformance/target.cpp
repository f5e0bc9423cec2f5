// SPDX-License-Identifier: Apache-2.0
#include "target.h"

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <vector>

extern char** environ;

namespace p11ha::conformance {
namespace {

struct State {
  Target target;
  std::string farm_dir;
  void* library = nullptr;
  CK_FUNCTION_LIST_PTR functions = nullptr;
};

State& GetState() {
  static State state;
  return state;
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

Target ParseTarget(const std::string& spec) {
  Target target;
  target.name = spec.empty() ? "softhsm" : spec;
  if (target.name == "softhsm") {
    target.kind = TargetKind::kSoftHsm;
    target.members = 1;
    target.module_path = P11HA_SOFTHSM_MODULE;
    target.token_label = "m1";
    return target;
  }
  constexpr std::string_view kPrefix = "p11ha:";
  if (target.name.rfind(kPrefix, 0) != 0) {
    throw std::runtime_error("P11HA_CONFORMANCE_TARGET must be softhsm or p11ha:N, not " +
                             target.name);
  }
  const std::string count = target.name.substr(kPrefix.size());
  if (count.empty() || count.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(count) < 1 || std::stoi(count) > 16) {
    throw std::runtime_error("bad member count in P11HA_CONFORMANCE_TARGET=" + target.name);
  }
  target.kind = TargetKind::kP11ha;
  target.members = std::stoi(count);
  target.module_path = Env("P11HA_MODULE");
  if (target.module_path.empty()) {
    throw std::runtime_error("P11HA_MODULE must name libp11ha.so for target " + target.name);
  }
  target.token_label = "ha-test";
  return target;
}

// Runs a program without a shell, so paths need no quoting; throws unless it exits 0.
void Run(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) {
    throw std::runtime_error("cannot start " + args[0]);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(args[0] + " failed");
  }
}

std::string MakeTempDir() {
  std::string base = Env("TMPDIR");
  if (base.empty()) base = "/tmp";
  std::string pattern = base + "/p11ha-conformance-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed in " + base);
  return pattern;
}

void MakeFarm(const Target& target, const std::string& dir) {
  Run({P11HA_FARM_SCRIPT, dir, std::to_string(target.members)});
  // Both variables are read at C_Initialize (SoftHSM's and p11ha's), so they must be set
  // before the module is loaded; nothing else in this process reads them concurrently.
  setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
  setenv("P11HA_CONFIG", (dir + "/p11ha.toml").c_str(), 1);
}

// A cluster of two or more members refuses to create keys without a domain key, so the p11ha
// targets install one through the CLI when CMake told us where it is.
void InstallDomainKey(const Target& target, const std::string& dir) {
  if (target.kind != TargetKind::kP11ha || target.members < 2) return;
  const std::string cli = Env("P11HA_CLI");
  // Until replication lands the CLI has no domain verb and p11ha does not yet require the key.
  if (cli.empty() || std::system(("'" + cli + "' --help 2>/dev/null | grep -qw domain").c_str()) != 0) {
    std::cerr << "conformance: no 'p11ha domain' verb; no domain key on this " << target.members
              << "-member farm\n";
    return;
  }
  Run({cli, "domain", "create", "--shares", "3", "--threshold", "2", "--out", dir + "/shares",
       "--so-pin-file", dir + "/so.pin"});
}

}  // namespace

void SetUpTarget() {
  State& state = GetState();
  state.target = ParseTarget(Env("P11HA_CONFORMANCE_TARGET"));
  state.farm_dir = MakeTempDir();  // recorded first so TearDownTarget removes it on failure
  MakeFarm(state.target, state.farm_dir);
  InstallDomainKey(state.target, state.farm_dir);
  state.library = dlopen(state.target.module_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (state.library == nullptr) {
    throw std::runtime_error(std::string("dlopen: ") + dlerror());
  }
  auto get_function_list =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(state.library, "C_GetFunctionList"));
  if (get_function_list == nullptr) {
    throw std::runtime_error(state.target.module_path + " exports no C_GetFunctionList");
  }
  if (get_function_list(&state.functions) != CKR_OK || state.functions == nullptr) {
    throw std::runtime_error("C_GetFunctionList failed");
  }
  const CK_RV rv = InitializeModule();
  if (rv != CKR_OK) {
    std::ostringstream message;
    message << "C_Initialize returned 0x" << std::hex << rv;
    throw std::runtime_error(message.str());
  }
  std::cerr << "conformance: target " << state.target.name << ", farm " << state.farm_dir
            << "\n";
}

void TearDownTarget() {
  State& state = GetState();
  if (state.functions != nullptr) state.functions->C_Finalize(nullptr);
  state.functions = nullptr;
  if (state.library != nullptr) dlclose(state.library);
  state.library = nullptr;
  if (!state.farm_dir.empty() && Env("P11HA_CONFORMANCE_KEEP_FARM").empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(state.farm_dir, ignored);
  }
}

const Target& CurrentTarget() { return GetState().target; }

CK_FUNCTION_LIST_PTR Module() { return GetState().functions; }

CK_RV InitializeModule() {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  return Module()->C_Initialize(&args);
}

CK_RV Expected(const Divergence& divergence) {
  static const std::string documented = [] {
    std::ifstream file(P11HA_CONFORMANCE_DIVERGENCES);
    std::ostringstream text;
    text << file.rdbuf();
    return text.str();
  }();
  if (documented.find("`" + std::string(divergence.id) + "`") == std::string::npos) {
    throw std::logic_error("divergence `" + std::string(divergence.id) +
                           "` is not listed in DIVERGENCES.md");
  }
  return CurrentTarget().kind == TargetKind::kSoftHsm ? divergence.softhsm : divergence.p11ha;
}

}  // namespace p11ha::conformance
