// SPDX-License-Identifier: Apache-2.0
#include "bench_workload.h"

#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "bare_handoff.h"
#include "bench_module.h"

namespace p11ha::bench {
namespace {

using Clock = std::chrono::steady_clock;

CK_OBJECT_HANDLE FindOne(Module& m, CK_SESSION_HANDLE session, CK_OBJECT_CLASS object_class, const char* label) {
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &object_class, sizeof object_class},
                          {CKA_LABEL, const_cast<char*>(label), std::strlen(label)}};
  Module::Check(m->C_FindObjectsInit(session, match, 2), "C_FindObjectsInit");
  CK_OBJECT_HANDLE found = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  CK_RV rv = m->C_FindObjects(session, &found, 1, &n);
  m->C_FindObjectsFinal(session);
  Module::Check(rv, "C_FindObjects");
  if (n != 1) throw std::runtime_error(std::string("the token holds no '") + label + "'; stage it first");
  return found;
}

// One thread's operation on its own session; returns the answer of the call that failed, if any.
using Step = std::function<CK_RV()>;

Step SignStep(Module& m, CK_SESSION_HANDLE session, const char* label, CK_MECHANISM_TYPE type,
              const std::array<CK_BYTE, 32>& data) {
  CK_OBJECT_HANDLE key = FindOne(m, session, CKO_PRIVATE_KEY, label);
  return [&m, session, key, type, &data] {
    CK_MECHANISM mechanism{type, nullptr, 0};
    if (CK_RV rv = m->C_SignInit(session, &mechanism, key); rv != CKR_OK) return rv;
    CK_BYTE signature[512];
    CK_ULONG length = sizeof signature;
    return m->C_Sign(session, const_cast<CK_BYTE*>(data.data()), data.size(), signature, &length);
  };
}

Step MakeStep(Module& m, CK_SESSION_HANDLE session, const std::string& operation) {
  static const std::array<CK_BYTE, 32> digest = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  static const std::vector<CK_BYTE> kib(1024, 0x5a);
  if (operation == "ecdsa-p256") return SignStep(m, session, kEcLabel, CKM_ECDSA, digest);
  if (operation == "rsa2048-sha256") return SignStep(m, session, kRsaLabel, CKM_SHA256_RSA_PKCS, digest);
  if (operation == "aes-gcm-1k") {
    CK_OBJECT_HANDLE key = FindOne(m, session, CKO_SECRET_KEY, kAesLabel);
    auto counter = std::make_shared<std::uint64_t>(0);
    return [&m, session, key, counter] {
      // A fresh IV per encryption, as GCM requires.
      CK_BYTE iv[12] = {};
      std::uint64_t n = ++*counter;
      std::memcpy(iv, &n, sizeof n);
      CK_GCM_PARAMS params{};
      params.pIv = iv;
      params.ulIvLen = sizeof iv;
      params.ulIvBits = 8 * sizeof iv;
      params.ulTagBits = 128;
      CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
      if (CK_RV rv = m->C_EncryptInit(session, &mechanism, key); rv != CKR_OK) return rv;
      CK_BYTE out[1024 + 16];
      CK_ULONG length = sizeof out;
      return m->C_Encrypt(session, const_cast<CK_BYTE*>(kib.data()), kib.size(), out, &length);
    };
  }
  if (operation == "sha256-1k") {
    return [&m, session] {
      CK_MECHANISM mechanism{CKM_SHA256, nullptr, 0};
      if (CK_RV rv = m->C_DigestInit(session, &mechanism); rv != CKR_OK) return rv;
      CK_BYTE out[32];
      CK_ULONG length = sizeof out;
      return m->C_Digest(session, const_cast<CK_BYTE*>(kib.data()), kib.size(), out, &length);
    };
  }
  if (operation == "find-by-id") {
    return [&m, session] {
      CK_ATTRIBUTE match[] = {{CKA_ID, const_cast<char*>(kFindId), std::strlen(kFindId)}};
      if (CK_RV rv = m->C_FindObjectsInit(session, match, 1); rv != CKR_OK) return rv;
      CK_OBJECT_HANDLE found[4];
      CK_ULONG n = 0;
      CK_RV rv = m->C_FindObjects(session, found, 4, &n);
      CK_RV final_rv = m->C_FindObjectsFinal(session);
      if (rv == CKR_OK && n != 1) rv = CKR_GENERAL_ERROR;  // the one object, no more, no less
      return rv != CKR_OK ? rv : final_rv;
    };
  }
  throw std::runtime_error("unknown operation '" + operation + "'");
}

CallsRunOn CallsRunOnFor(const WorkloadSpec& spec) {
  if (spec.bare_handoff) return CallsRunOn::kPartner;
  if (spec.module_threads_call && !spec.no_library_threads) return CallsRunOn::kModuleThreads;
  return CallsRunOn::kCaller;
}

}  // namespace

const std::vector<Operation>& Operations() {
  static const std::vector<Operation> operations = {
      {"ecdsa-p256", "ECDSA P-256 sign (C_SignInit + C_Sign, 32 bytes)"},
      {"rsa2048-sha256", "RSA-2048 sign (CKM_SHA256_RSA_PKCS, 32 bytes)"},
      {"aes-gcm-1k", "AES-256-GCM encrypt of 1 KiB (C_EncryptInit + C_Encrypt)"},
      {"sha256-1k", "SHA-256 digest of 1 KiB (C_DigestInit + C_Digest)"},
      {"find-by-id", "C_FindObjects by CKA_ID among 100 keys (Init + Find + Final)"},
  };
  return operations;
}

struct Workload::Open {
  explicit Open(const WorkloadSpec& spec)
      : m(spec.module, spec.no_library_threads), calls_run_on(CallsRunOnFor(spec)), handoff_asleep(spec.handoff_asleep) {}
  Module m;
  const CallsRunOn calls_run_on;
  const bool handoff_asleep;
  std::vector<CK_SESSION_HANDLE> sessions;  // one per thread, after the one that logged in
  std::vector<Step> steps;
};

Workload::Workload(const WorkloadSpec& spec) : open_(std::make_unique<Open>(spec)) {
  Module& m = open_->m;
  const CK_SLOT_ID slot = m.SlotOf(spec.token_label);
  open_->sessions.push_back(OpenSession(m, slot));
  Login(m, open_->sessions.back(), spec.pin);
  for (int t = 0; t < spec.threads; ++t) {
    open_->sessions.push_back(OpenSession(m, slot));
    open_->steps.push_back(MakeStep(m, open_->sessions.back(), spec.operation));
  }
  // A short warm-up keeps first-call costs (session and key lookups in p11ha) out of the figures.
  for (Step& step : open_->steps) step();
}

Workload::~Workload() {
  for (CK_SESSION_HANDLE session : open_->sessions) open_->m->C_CloseSession(session);
}

WorkloadResult Workload::Measure(double seconds, const std::optional<Placement>& placement) {
  const int thread_count = static_cast<int>(open_->steps.size());
  const bool placed = placement && thread_count == 1;
  std::mutex placement_error_mu;
  std::string placement_error;
  std::vector<std::vector<float>> latencies(thread_count);
  std::vector<long> errors(thread_count, 0);
  std::vector<CK_RV> first_error(thread_count, CKR_OK);
  std::atomic<bool> go{false};
  const auto run_for = std::chrono::duration<double>(seconds);
  Clock::time_point start, end;
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    latencies[t].reserve(1 << 16);
    threads.emplace_back([&, t] {
      const Step& step = open_->steps[t];
      std::optional<BareHandoff> handoff;
      if (open_->calls_run_on == CallsRunOn::kPartner)
        handoff.emplace(step, open_->handoff_asleep ? HandoffWait::kSleep : HandoffWait::kSpin);
      if (placed) try {
        switch (open_->calls_run_on) {
          case CallsRunOn::kCaller:
            PinThisThread(placement->work_cpu);
            break;
          case CallsRunOn::kPartner:
            PinThread(handoff->partner(), placement->work_cpu);
            PinThisThread(placement->caller_cpu);
            break;
          case CallsRunOn::kModuleThreads:
            // p11ha's call workers exist since the warm-up; a new one would inherit this
            // thread's CPU, so the others are pinned first.
            PinOtherThreads(placement->work_cpu);
            PinThisThread(placement->caller_cpu);
            break;
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(placement_error_mu);
        placement_error = e.what();
      }
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const auto deadline = start + std::chrono::duration_cast<Clock::duration>(run_for);
      for (;;) {
        const auto before = Clock::now();
        if (before >= deadline) break;
        const CK_RV rv = handoff ? (*handoff)() : step();
        const auto after = Clock::now();
        if (rv != CKR_OK) {
          if (errors[t]++ == 0) first_error[t] = rv;
          continue;
        }
        latencies[t].push_back(std::chrono::duration<float, std::micro>(after - before).count());
      }
    });
  }
  start = Clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& thread : threads) thread.join();
  end = Clock::now();
  if (!placement_error.empty()) throw std::runtime_error(placement_error);

  WorkloadResult result;
  std::vector<float> all;
  for (int t = 0; t < thread_count; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    result.errors += errors[t];
    if (result.first_error.empty() && errors[t] > 0) result.first_error = "0x" + Module::Hex(first_error[t]);
  }
  result.operations = static_cast<long>(all.size());
  result.seconds = std::chrono::duration<double>(end - start).count();
  if (!all.empty()) {
    auto at = [&all](double q) {
      auto k = static_cast<std::size_t>(q * static_cast<double>(all.size() - 1));
      std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
      return static_cast<double>(all[k]);
    };
    result.p50_us = at(0.50);
    result.p99_us = at(0.99);
  }
  return result;
}

void Stage(const std::string& module, const std::string& token_label, const std::string& pin) {
  Module m(module);
  const CK_SESSION_HANDLE session = OpenSession(m, m.SlotOf(token_label));
  Login(m, session, pin);
  CK_BBOOL yes = CK_TRUE;
  CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_ULONG bits = 2048, aes_len = 32;
  CK_BYTE exponent[] = {0x01, 0x00, 0x01};
  auto label = [](const char* text) { return CK_ATTRIBUTE{CKA_LABEL, const_cast<char*>(text), std::strlen(text)}; };
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE, key = CK_INVALID_HANDLE;
  {
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256},
                            label(kEcLabel)};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1}, label(kEcLabel)};
    CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    Module::Check(m->C_GenerateKeyPair(session, &mechanism, pub_t, 4, priv_t, 4, &pub, &priv), "EC key pair");
  }
  {
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_MODULUS_BITS, &bits, sizeof bits},
                            {CKA_PUBLIC_EXPONENT, exponent, sizeof exponent}, label(kRsaLabel)};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1}, label(kRsaLabel)};
    CK_MECHANISM mechanism{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
    Module::Check(m->C_GenerateKeyPair(session, &mechanism, pub_t, 5, priv_t, 4, &pub, &priv), "RSA key pair");
  }
  {
    CK_ATTRIBUTE key_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_ENCRYPT, &yes, 1},
                            {CKA_VALUE_LEN, &aes_len, sizeof aes_len}, label(kAesLabel)};
    CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
    Module::Check(m->C_GenerateKey(session, &mechanism, key_t, 5, &key), "AES key");
  }
  // Secret keys: CKA_ID belongs to keys and certificates, not to data objects.
  CK_BBOOL no = CK_FALSE;
  for (int i = 0; i < kFindObjects; ++i) {
    const std::string id = "bench-find-" + std::to_string(i);
    CK_ATTRIBUTE object_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &no, 1},
                               {CKA_VALUE_LEN, &aes_len, sizeof aes_len},
                               {CKA_ID, const_cast<char*>(id.data()), id.size()}, label("bench-find")};
    CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
    Module::Check(m->C_GenerateKey(session, &mechanism, object_t, 5, &object), "a key to find");
  }
  m->C_CloseSession(session);
}

}  // namespace p11ha::bench
