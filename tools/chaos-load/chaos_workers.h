// SPDX-License-Identifier: Apache-2.0
// The worker loops of p11ha-chaos-load (tools/chaos): what an application does with p11ha while
// its members fail underneath. Each loop runs on its own thread and session until `stop`.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "probe_support.h"

namespace chaos {

using replication_probe::Bytes;
using Clock = std::chrono::steady_clock;

std::int64_t NowMs();     // CLOCK_REALTIME
std::string LocalStamp();  // the p11ha log's own stamp format, to find the matching log lines
std::string RvText(CK_RV rv);

struct Failure {
  std::string at;
  const char* function;
  CK_RV rv;
  double took_ms;
};

// What one thread did. Only that thread writes it until `done`; the summary reads it after.
struct Worker {
  std::string name;
  CK_SESSION_HANDLE session = 0;
  std::int64_t calls = 0;
  std::map<std::string, std::int64_t> ops;  // completed application operations by kind
  std::vector<Failure> failures;            // every CK_RV != CKR_OK the application saw
  std::vector<std::string> wrong;           // every call succeeded, yet the result was wrong
  std::int64_t keys_created = 0, keys_destroyed = 0;
  std::set<std::pair<std::string, CK_OBJECT_CLASS>> alive;  // token objects it made and did not destroy
  double slowest_ms = 0;
  std::atomic<bool> done{false};
  // For the report when a call never returns.
  std::atomic<const char*> in_call{nullptr};
  std::atomic<std::int64_t> call_started_ms{0};

  template <typename F>
  CK_RV Call(const char* function, F&& body) {
    ++calls;
    call_started_ms = NowMs();
    in_call = function;
    const auto start = Clock::now();
    const CK_RV rv = body();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    in_call = nullptr;
    if (ms > slowest_ms) slowest_ms = ms;
    if (rv != CKR_OK) failures.push_back({LocalStamp(), function, rv, ms});
    return rv;
  }
};

struct Shared {
  CK_OBJECT_HANDLE signer_key = CK_INVALID_HANDLE;  // long-lived EC P-256 private key
  Bytes signer_point;                               // its public CKA_EC_POINT
  // SoftHSM 2.6.1 has no CKM_ECDSA_SHA256, so multi-part signing uses CKM_SHA256_RSA_PKCS.
  CK_OBJECT_HANDLE rsa_key = CK_INVALID_HANDLE;
  Bytes rsa_modulus, rsa_exponent;
  CK_OBJECT_HANDLE aes_key = CK_INVALID_HANDLE;     // long-lived AES-256 key
  std::string label_prefix;                         // unique per run
  int keep_every = 8;                               // keygen keeps one key pair in this many
  int pause_ms = 1;                                 // between operations: an application, not a CPU burner
  const std::atomic<bool>* stop = nullptr;
};

void SignLoop(Worker& w, const Shared& s);
void KeygenLoop(Worker& w, const Shared& s);
void AesLoop(Worker& w, const Shared& s);
void DigestLoop(Worker& w, const Shared& s);

}  // namespace chaos
