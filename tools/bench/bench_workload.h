// SPDX-License-Identifier: Apache-2.0
// The measured side of p11ha-bench: one PKCS#11 module, one token, one kind of operation, run
// by N threads for a fixed time. Each measurement is its own process (bench_overhead.cpp), so that
// the module measured directly and p11ha never share a process or a SoftHSM instance.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cpu_placement.h"

namespace p11ha::bench {

// What the staged token holds (Stage) and the operations measured on it.
inline constexpr const char* kEcLabel = "bench-ec";
inline constexpr const char* kRsaLabel = "bench-rsa";
inline constexpr const char* kAesLabel = "bench-aes";
inline constexpr const char* kFindId = "bench-find-42";  // CKA_ID of one of the kFindObjects keys
inline constexpr int kFindObjects = 100;

struct Operation {
  const char* name;
  const char* what;
};
// ecdsa-p256, rsa2048-sha256, aes-gcm-1k, sha256-1k, find-by-id.
const std::vector<Operation>& Operations();

struct WorkloadSpec {
  std::string module;       // PKCS#11 module to dlopen
  std::string token_label;  // the token, found by label
  std::string pin;          // user PIN
  std::string operation;    // one of Operations()
  int threads = 1;
  double seconds = 2;
  // C_Initialize with CKF_LIBRARY_CANT_CREATE_OS_THREADS: p11ha then calls its members on the
  // caller's thread (no call timeout), which shows what the hand-off to a call worker costs.
  bool no_library_threads = false;
  // Each thread hands every operation to a partner thread and waits for its answer
  // (BareHandoff): the module used directly, plus the least a hand-off costs. Spinning, or
  // with `handoff_asleep` in futex (when the callers leave no CPU free for the partners).
  bool bare_handoff = false;
  bool handoff_asleep = false;
  // The module runs its calls on threads of its own (p11ha with call workers): a placement
  // puts those threads, not the measuring one, on the work CPU.
  bool module_threads_call = false;
};

struct WorkloadResult {
  long operations = 0;
  double seconds = 0;
  double p50_us = 0;
  double p99_us = 0;
  long errors = 0;
  std::string first_error;
};

// One module opened for one operation: its sessions logged in, its keys found and one warm-up
// step done, so that it can then be measured run after run. Throws std::runtime_error when the
// module, token or keys cannot be used at all.
class Workload {
 public:
  explicit Workload(const WorkloadSpec& spec);
  ~Workload();
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  // spec.threads threads doing the operation for `seconds`. A placement applies to a
  // 1-thread workload only: the module's calls then run on its work CPU whoever makes them.
  WorkloadResult Measure(double seconds, const std::optional<Placement>& placement = std::nullopt);

 private:
  struct Open;
  std::unique_ptr<Open> open_;
};

// Makes the keys and objects the operations use on a freshly initialised token, directly.
void Stage(const std::string& module, const std::string& token_label, const std::string& pin);

}  // namespace p11ha::bench
