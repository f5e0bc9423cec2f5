// SPDX-License-Identifier: Apache-2.0
// Failover beyond one failed step (DESIGN.md "Failure"; issue 4): every member down and back in
// the same process, the bound on the input kept for replay, and a session key whose member
// dies. Three staged test members (failover_support.h).
#include <algorithm>
#include <catch2/catch.hpp>

#include "failover_support.h"

namespace p11ha::module_test::failover {
namespace {

TEST_CASE("failover: with every member down calls fail fast, and the same process recovers by itself",
          "[integration][failover]") {
  Cluster c;
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  const Digest before = Sha256("before the outage");
  CK_RV rv = CKR_OK;
  REQUIRE(VerifyP256(c.point(), before, SignDigest(f, s, c.key().private_key, before, &rv)));

  // `dead` alone ends at the first re-initialisation a probe makes (the member's C_Finalize
  // lifts it); the fail rule survives that and keeps the outage until the test clears it.
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "dead\nfail * CKR_DEVICE_ERROR");
  Trace t;
  std::vector<CK_RV> answers;  // of each attempted operation: its first error, or CKR_OK
  bool hung = false;
  {
    Watchdog watchdog(c.sos(), kHungAfter);
    CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
    CK_MECHANISM sha256{CKM_SHA256, nullptr, 0};
    std::string label = "failover-sign";
    CK_ATTRIBUTE query[] = {{CKA_LABEL, label.data(), label.size()}};
    // Over a few probe intervals, so that p11ha's attempts to bring members back run meanwhile.
    const auto outage_end = Clock::now() + 3 * milliseconds(kProbeIntervalMs);
    for (int round = 0; round < 3 || Clock::now() < outage_end; ++round) {
      if (round > 0) std::this_thread::sleep_for(milliseconds(50));
      Digest input = before, out{};
      CK_ULONG length = out.size();
      CK_RV answer = t("C_SignInit", [&] { return f->C_SignInit(s, &ecdsa, c.key().private_key); });
      if (answer == CKR_OK) {
        Bytes signature(64);
        length = signature.size();
        answer = t("C_Sign", [&] { return f->C_Sign(s, input.data(), input.size(), signature.data(), &length); });
      }
      answers.push_back(answer);
      CK_BYTE random[16];
      answers.push_back(t("C_GenerateRandom", [&] { return f->C_GenerateRandom(s, random, sizeof random); }));
      answer = t("C_DigestInit", [&] { return f->C_DigestInit(s, &sha256); });
      if (answer == CKR_OK) {
        length = out.size();
        answer = t("C_Digest", [&] { return f->C_Digest(s, input.data(), input.size(), out.data(), &length); });
      }
      answers.push_back(answer);
      // A search that answers "nothing" would tell the application its keys are gone.
      answer = t("C_FindObjectsInit", [&] { return f->C_FindObjectsInit(s, query, 1); });
      if (answer == CKR_OK) t("C_FindObjectsFinal", [&] { return f->C_FindObjectsFinal(s); });
      answers.push_back(answer);
    }
    hung = watchdog.fired();
  }
  {
    INFO("answers with every member down (sign, random, digest, search; repeated): "
         << Tally(answers) << "\nslowest call: " << t.SlowestMs() << " ms");
    INFO("p11ha log (tail):\n" << c.LogTail());
    CHECK_FALSE(hung);
    CHECK(std::all_of(answers.begin(), answers.end(), [](CK_RV a) { return a == CKR_DEVICE_ERROR; }));
    CHECK(t.SlowestMs() <= kCallTimeoutMs + 300);
  }

  // Back: no C_Finalize or C_Initialize by the application, same session, same key handle.
  const std::vector<int> logins = c.Counts("C_Login");
  const long long cleared = NowMs();
  const auto cleared_at = Clock::now();
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "clear");
  const Digest after = Sha256("after the outage");
  Bytes signature;
  std::vector<CK_RV> answers_meanwhile;
  const bool signs = WaitFor(
      [&] {
        CK_RV answer = CKR_OK;
        signature = SignDigest(f, s, c.key().private_key, after, &answer);
        answers_meanwhile.push_back(answer);
        return answer == CKR_OK;
      },
      kBackWithin);
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - cleared_at).count();
  INFO("signs with the same session and key once the faults were cleared: " << Tally(answers_meanwhile) << ", for "
                                                                            << took << " ms");
  INFO("p11ha log (tail):\n" << c.LogTail());
  REQUIRE(signs);
  CHECK(VerifyP256(c.point(), after, signature));
  CK_SESSION_INFO info{};
  CHECK(f->C_GetSessionInfo(s, &info) == CKR_OK);
  CHECK(info.state == CKS_RW_USER_FUNCTIONS);
  // Every member re-initialised and logged in again with the PIN p11ha keeps.
  CHECK(WaitFor(
      [&] {
        for (int i = 0; i < kMembers; ++i)
          if (c.Count(i, "C_Login") <= logins[i]) return false;
        return true;
      },
      kBackWithin));
  bool served = false;
  for (int i = 0; i < kMembers; ++i) served = served || c.ServedSince(i, "C_Sign", cleared);
  CHECK(served);
}

TEST_CASE("failover: a call whose last member up goes silent answers CKR_DEVICE_ERROR within call_timeout_ms",
          "[integration][failover]") {
  Cluster c;
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  // Members 2 and 3 dead for good; member 1, the last one up, then never answers a C_Sign.
  for (int i = 1; i < kMembers; ++i) c.Fault(i, "dead\nfail * CKR_DEVICE_ERROR");
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  Digest input = Sha256("to a silent member");
  CK_RV init_rv = CKR_OK, sign_rv = CKR_OK;
  double took_ms = 0;
  bool hung = false;
  {
    Watchdog watchdog(c.sos(), kHungAfter);
    // Until the session's operation runs on member 1: the dead members are found out first.
    for (int attempt = 0; attempt < 20; ++attempt) {
      init_rv = f->C_SignInit(s, &ecdsa, c.key().private_key);
      if (init_rv == CKR_OK) break;
    }
    REQUIRE(init_rv == CKR_OK);
    c.Fault(0, "stall C_Sign");
    Bytes signature(64);
    CK_ULONG length = signature.size();
    const auto start = Clock::now();
    sign_rv = f->C_Sign(s, input.data(), input.size(), signature.data(), &length);
    took_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    hung = watchdog.fired();
  }
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "clear");
  INFO("C_Sign answered " << Tally({sign_rv}) << " after " << took_ms << " ms (call_timeout_ms " << kCallTimeoutMs
                          << ")\np11ha log (tail):\n"
                          << c.LogTail());
  CHECK_FALSE(hung);
  CHECK(sign_rv == CKR_DEVICE_ERROR);
  CHECK(took_ms <= kCallTimeoutMs);
  // It did wait for the member: most of the timeout, not a fail-fast answer that skipped it.
  CHECK(took_ms >= kCallTimeoutMs * 0.8);
}

// A digest fed `fed` bytes, whose member then fails at the next C_DigestUpdate of `more` bytes.
// Returns that update's answer; C_DigestFinal's goes to `final_rv`, its digest to `result`.
CK_RV DigestAcrossFailure(const Cluster& c, std::size_t fed, std::size_t more, std::string* whole, CK_RV* final_rv,
                          Digest* result) {
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  CK_MECHANISM sha256{CKM_SHA256, nullptr, 0};
  const std::vector<int> before = c.Counts("C_DigestInit");
  REQUIRE(f->C_DigestInit(s, &sha256) == CKR_OK);
  const int serving = c.MovedMember("C_DigestInit", before);
  REQUIRE(serving >= 0);
  for (std::size_t done = 0; done < fed; done += 20) {
    std::string chunk(std::min<std::size_t>(20, fed - done), static_cast<char>('a' + done / 20));
    *whole += chunk;
    REQUIRE(f->C_DigestUpdate(s, reinterpret_cast<CK_BYTE_PTR>(chunk.data()), chunk.size()) == CKR_OK);
  }
  Armed armed;
  c.Arm(Kind::kFail, serving, "C_DigestUpdate", 0, &armed);
  std::string last(more, 'z');
  *whole += last;
  const CK_RV rv = f->C_DigestUpdate(s, reinterpret_cast<CK_BYTE_PTR>(last.data()), last.size());
  INFO("fault '" << armed.spec << "' on member " << serving + 1);
  CHECK(c.Hit(armed));
  CK_ULONG length = result->size();
  *final_rv = f->C_DigestFinal(s, result->data(), &length);
  return rv;
}

TEST_CASE("failover: a digest past replay_limit_bytes fails clearly, and the session goes on",
          "[integration][failover]") {
  Cluster c(64);
  std::string whole;
  CK_RV final_rv = CKR_OK;
  Digest result{};
  const CK_RV rv = DigestAcrossFailure(c, 200, 20, &whole, &final_rv, &result);
  INFO("C_DigestUpdate after 200 bytes, its member failing -> " << RvText(rv) << ", then C_DigestFinal -> "
                                                                << RvText(final_rv));
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(rv == CKR_DEVICE_ERROR);
  // Over, as after any error but CKR_BUFFER_TOO_SMALL (PKCS#11 2.40 §5.2).
  CHECK(final_rv == CKR_OPERATION_NOT_INITIALIZED);

  CK_FUNCTION_LIST* f = c.f();
  CK_MECHANISM sha256{CKM_SHA256, nullptr, 0};
  std::string next = "the next operation on the same session";
  Digest out{};
  CK_ULONG length = out.size();
  CHECK(f->C_DigestInit(c.session(), &sha256) == CKR_OK);
  CHECK(f->C_Digest(c.session(), reinterpret_cast<CK_BYTE_PTR>(next.data()), next.size(), out.data(), &length) ==
        CKR_OK);
  CHECK(out == Sha256(next));
}

TEST_CASE("failover: a digest within replay_limit_bytes survives its member's failure", "[integration][failover]") {
  Cluster c(64);
  std::string whole;
  CK_RV final_rv = CKR_OK;
  Digest result{};
  const CK_RV rv = DigestAcrossFailure(c, 40, 20, &whole, &final_rv, &result);
  INFO("C_DigestUpdate after 40 bytes, its member failing -> " << RvText(rv) << ", then C_DigestFinal -> "
                                                               << RvText(final_rv));
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(rv == CKR_OK);
  CHECK(final_rv == CKR_OK);
  CHECK(result == Sha256(whole));
}

TEST_CASE("failover: a session key outlives the member that made it", "[integration][failover]") {
  Cluster c;
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  const std::vector<int> before = c.Counts("C_GenerateKeyPair");
  const KeyPair pair = GenerateP256(f, s, /*on_token=*/false, "failover-session-key");
  const int creator = c.MovedMember("C_GenerateKeyPair", before);
  REQUIRE(creator >= 0);
  const Bytes point = EcPoint(f, s, pair.public_key);
  const int calls = c.AllCalls(creator);

  c.Fault(creator, "dead");
  Trace t;
  int verified = 0;
  for (int n = 1; n <= 3; ++n) {
    // Later signs come after p11ha may have re-initialised the creator, whose SoftHSM then
    // no longer has the key and hands its old handle numbers to other objects.
    if (n > 1) std::this_thread::sleep_for(milliseconds(2 * kProbeIntervalMs));
    const Digest digest = Sha256("session key " + std::to_string(n));
    CK_RV rv = CKR_OK;
    Bytes signature;
    t("sign " + std::to_string(n), [&] {
      signature = SignDigest(f, s, pair.private_key, digest, &rv);
      return rv;
    });
    verified += rv == CKR_OK && VerifyP256(point, digest, signature);
  }
  INFO("the key pair was made on member " << creator + 1 << ", then made dead\n" << t.Text());
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(c.AllCalls(creator) > calls);
  CHECK(t.AllOk());
  CHECK(verified == 3);
}

TEST_CASE("failover: an in-process member's device failure under one call does not let go of its other calls",
          "[integration][failover]") {
  Cluster c;
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE first = c.session();
  const CK_SESSION_HANDLE second = OpenSession(f);
  // The priority policy sends both operations to member 1. Its first C_Sign stalls (a call that
  // is slow, not dead); the next one says its device failed.
  c.Fault(0, "stall C_Sign times 1\nfail C_Sign CKR_DEVICE_ERROR after 1");
  const Digest stalled_digest = Sha256("stalled on member 1");
  const Digest failed_digest = Sha256("failed on member 1");
  CK_RV stalled_rv = CKR_GENERAL_ERROR, failed_rv = CKR_GENERAL_ERROR;
  Bytes stalled_signature, failed_signature;
  double stalled_ms = 0;
  bool hung = false;
  {
    Watchdog watchdog(c.sos(), kHungAfter);
    const int signs_before = c.Count(0, "C_Sign");
    std::thread stalled([&] {
      const auto start = Clock::now();
      stalled_signature = SignDigest(f, first, c.key().private_key, stalled_digest, &stalled_rv);
      stalled_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    });
    // Until the first C_Sign is inside member 1.
    const auto until = Clock::now() + kHungAfter;
    while (c.Count(0, "C_Sign") == signs_before && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
    failed_signature = SignDigest(f, second, c.key().private_key, failed_digest, &failed_rv);
    stalled.join();
    hung = watchdog.fired();
  }
  c.Fault(0, "clear");
  INFO("stalled C_Sign answered " << Tally({stalled_rv}) << " after " << stalled_ms << " ms (call_timeout_ms "
                                  << kCallTimeoutMs << "), the other " << Tally({failed_rv}) << "\np11ha log (tail):\n"
                                  << c.LogTail());
  CHECK_FALSE(hung);
  CHECK(c.Count(0, "C_Sign") >= 2);  // both reached member 1
  CHECK(stalled_rv == CKR_OK);
  CHECK(failed_rv == CKR_OK);
  CHECK(VerifyP256(c.point(), stalled_digest, stalled_signature));
  CHECK(VerifyP256(c.point(), failed_digest, failed_signature));
  // A call let go early could still write the application's buffers from inside the member
  // once p11ha had answered: an in-process member's call is waited for until its timeout.
  // (A p11-kit remote member's calls are let go at once, their connection shut down first:
  // the failover test's all-down scenario.)
  CHECK(stalled_ms >= kCallTimeoutMs * 0.8);
  CHECK_THAT(ReadFile(c.LogPath()), !Catch::Matchers::Contains("abandoned: the device failed"));
}

}  // namespace
}  // namespace p11ha::module_test::failover
