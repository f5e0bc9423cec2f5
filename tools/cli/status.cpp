// SPDX-License-Identifier: Apache-2.0
// `p11ha status`: connects to every member itself (no shared state with running applications)
// and reports what it measures.
#include <CLI/CLI.hpp>
#include <openssl/crypto.h>
#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>

#include "config/config.h"
#include "provider/core/error.h"
#include "provider/core/secure_bytes.h"
#include "provider/member/member_pool.h"
#include "tools/cli/cluster.h"
#include "tools/cli/command.h"
#include "tools/cli/status_replication.h"
#include "tools/cli/status_report.h"

namespace p11ha::cli {
namespace {

struct StatusOptions {
  std::string config_path;
  bool json = false;
};


std::string PolicyName(config::BalancingPolicy policy) {
  switch (policy) {
    case config::BalancingPolicy::kLeastBusy: return "least-busy";
    case config::BalancingPolicy::kRoundRobin: return "round-robin";
    case config::BalancingPolicy::kPriority: return "priority";
  }
  return "?";
}

std::string Trimmed(const unsigned char* field, std::size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

std::string Failed(const char* function, CK_RV rv) { return std::string(function) + " -> " + RvName(rv); }

// Counts the token objects the member's user can see, on a session of our own, the way
// provider/core/find.cpp searches a member. Returns the reason on failure.
std::optional<std::uint64_t> CountObjects(Member& member, std::string& why) {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  CK_RV rv = member.Call("C_OpenSession", CallKind::kStore, &CK_FUNCTION_LIST::C_OpenSession, member.slot(),
                         CK_FLAGS{CKF_SERIAL_SESSION}, CK_VOID_PTR{nullptr}, CK_NOTIFY{nullptr}, &session);
  if (rv != CKR_OK) {
    why = Failed("C_OpenSession", rv);
    return std::nullopt;
  }
  std::uint64_t count = 0;
  rv = member.Call("C_FindObjectsInit", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsInit, session,
                   CK_ATTRIBUTE_PTR{nullptr}, CK_ULONG{0});
  if (rv != CKR_OK) {
    why = Failed("C_FindObjectsInit", rv);
  } else {
    CK_OBJECT_HANDLE batch[256];
    for (;;) {
      CK_ULONG n = 0;
      rv = member.Call("C_FindObjects", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjects, session, batch,
                       CK_ULONG{std::size(batch)}, &n);
      if (rv != CKR_OK) {
        why = Failed("C_FindObjects", rv);
        break;
      }
      if (n == 0) break;
      count += n;
    }
    CK_RV final_rv =
        member.Call("C_FindObjectsFinal", CallKind::kParallel, &CK_FUNCTION_LIST::C_FindObjectsFinal, session);
    if (rv == CKR_OK && final_rv != CKR_OK) {
      rv = final_rv;
      why = Failed("C_FindObjectsFinal", rv);
    }
  }
  member.Call("C_CloseSession", CallKind::kStore, &CK_FUNCTION_LIST::C_CloseSession, session);
  if (rv != CKR_OK) {
    if (IsDeviceClass(rv)) member.MarkDown(why);
    return std::nullopt;
  }
  return count;
}

// The pin_file's PIN and whether a member already refused it.
struct Credentials {
  const SecureBytes* pin = nullptr;
  std::string refused_by;
};


std::string LocalTime(std::chrono::system_clock::time_point when) {
  std::time_t seconds = std::chrono::system_clock::to_time_t(when);
  std::tm local{};
  localtime_r(&seconds, &local);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S%z", &local);
  return text;
}

MemberReport Inspect(Member& member, Credentials& credentials, const std::string& domain_label) {
  MemberReport report;
  const config::MemberConfig& config = member.config();
  report.name = config.name;
  report.module = config.module;
  report.remote = config.remote;
  report.token_uri = config.token;
  report.standby = config.standby;

  if (member.up()) {
    CK_TOKEN_INFO info{};
    auto start = std::chrono::steady_clock::now();
    CK_RV rv = member.Call("C_GetTokenInfo", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetTokenInfo, member.slot(),
                           &info);
    report.latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (rv == CKR_OK) {
      report.label = Trimmed(info.label, sizeof info.label);
      report.serial = Trimmed(info.serialNumber, sizeof info.serialNumber);
      report.model = Trimmed(info.model, sizeof info.model);
      report.mechanisms = member.mechanisms().size();
    } else {
      member.MarkDown(Failed("C_GetTokenInfo", rv));
    }
  }
  if (member.up()) {
    if (credentials.pin == nullptr) {
      report.objects_note = "no pin_file: not logged in";
    } else if (!credentials.refused_by.empty()) {
      // Every wrong PIN counts towards the HSM's lockout; a monitoring job must not spend the
      // retries of every member on a PIN one member already refused.
      report.objects_note = "login not tried: " + credentials.refused_by + " refused the pin_file PIN";
      report.objects_problem = true;
    } else if (CK_RV rv = member.Login(CKU_USER, *credentials.pin); rv != CKR_OK) {
      report.objects_note = "login failed: " + Failed("C_Login", rv);
      report.objects_problem = true;
      if (PinRefused(rv)) credentials.refused_by = member.name();
      if (IsDeviceClass(rv)) member.MarkDown(Failed("C_Login", rv));
    } else {
      report.objects = CountObjects(member, report.objects_note);
      report.objects_problem = !report.objects.has_value();
      if (report.objects) {
        ReplicationFacts replication = InspectReplication(member, domain_label);
        report.domain = replication.domain;
        report.local_keys = replication.local_keys;
        if (!replication.problem.empty()) {
          report.objects_note = replication.problem;
          report.objects_problem = true;
        }
      }
    }
  }
  report.up = member.up();
  const MemberStatus status = member.Status();
  report.state = report.up && report.standby ? "standby" : MemberStateName(status.state);
  report.since = LocalTime(status.since);
  report.failures = status.failures;
  report.last_error = OneLine(status.last_error);
  if (!report.up) report.error = report.last_error;
  return report;
}

// The reconciler's dry pass, over a connection of its own (as `p11ha verify`). Down members
// are already reported above, so only the others get a count. Not tried after a failed login
// or search: another login with a refused PIN would spend one more of the HSM's retries.
void AddDrift(const config::Config& config, const SecureBytes& pin, StatusReport& report) {
  if (std::any_of(report.members.begin(), report.members.end(), [](const MemberReport& m) { return m.up && !m.objects; }))
    return;
  std::optional<replication::ReconcileReport> checked;
  try {
    Cluster cluster(config, pin);
    checked = ReconcilePass(cluster, config, true);
  } catch (const Stop&) {
    return;
  }
  const replication::ReconcileReport& drift = *checked;
  for (std::size_t i = 0; i < drift.members.size() && i < report.members.size(); ++i) {
    if (!report.members[i].up || !report.members[i].objects) continue;
    const replication::MemberReconcileReport& member = drift.members[i];
    report.members[i].drift = static_cast<std::size_t>(std::count_if(
        member.entries.begin(), member.entries.end(), [](const replication::DriftEntry& e) { return e.drift; }));
  }
}

int RunStatus(const StatusOptions& options) {
  const std::string path = ConfigPathOrDefault(options.config_path);
  config::Config config;
  std::unique_ptr<SecureBytes> pin;
  try {
    config = config::LoadConfig(path);
  } catch (const config::ConfigError& e) {
    std::cerr << "p11ha: " << OneLine(e.what()) << "\n";
    return kExitUsage;
  }
  if (!config.pin_file.empty()) {
    try {
      std::string text = config::ReadSecretFile(config.pin_file);
      pin = std::make_unique<SecureBytes>(text);
      OPENSSL_cleanse(text.data(), text.size());
    } catch (const config::ConfigError& e) {
      std::cerr << "p11ha: " << path << ": key 'auth.pin_file': " << OneLine(e.what()) << "\n";
      return kExitUsage;
    }
  }

  StatusReport report;
  report.config_path = path;
  report.cluster_label = config.cluster_label;
  report.slot_id = config.slot_id;
  report.policy = PolicyName(config.balancing);
  report.logged_in = pin != nullptr;

  std::optional<MemberPool> pool;
  try {
    pool.emplace(config);
    pool->LoadAll();
  } catch (const CkError& e) {
    std::cerr << "p11ha: " << path << ": " << OneLine(e.what()) << "\n";
    return kExitUsage;
  }
  pool->ConnectAll();
  Credentials credentials{pin.get(), {}};
  for (std::size_t i = 0; i < pool->size(); ++i) report.members.push_back(Inspect(pool->at(i), credentials, config.domain_key_label));
  pool->DisconnectAll();
  if (pin) AddDrift(config, *pin, report);

  if (options.json) {
    PrintJson(report, std::cout);
  } else {
    PrintTable(report, std::cout);
  }
  std::cout.flush();
  return report.Healthy() ? kExitOk : kExitProblem;
}

}  // namespace

Runner RegisterStatus(CLI::App& sub) {
  auto options = std::make_shared<StatusOptions>();
  AddConfigOption(sub, options->config_path);
  sub.add_flag("--json", options->json, "Machine-readable output for monitoring");
  sub.footer(
      "Exit status: 0 when every member is up (and, with [auth] pin_file, logged in and searched),\n"
      "1 when a member is down or its login or object search failed, 2 on bad usage or config.");
  return [options] { return RunStatus(*options); };
}

}  // namespace p11ha::cli
