// SPDX-License-Identifier: Apache-2.0
// C_Initialize..C_Finalize as applications drive it: repeated runs in one process, no thread
// left behind, an application that forbids threads, and fork() (PKCS#11 2.40 §6.7.7).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>

#include "support.h"

namespace p11ha::module_test {
namespace {

// Logs in, signs one digest with a fresh session key and checks it with OpenSSL.
void SignOnce(CK_FUNCTION_LIST* f, const std::string& label) {
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  const KeyPair pair = GenerateP256(f, session, /*on_token=*/false, label);
  const Digest digest = Sha256(label);
  CK_RV rv = CKR_OK;
  const Bytes signature = SignDigest(f, session, pair.private_key, digest, &rv);
  INFO(label << ": sign -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  CHECK(VerifyP256(EcPoint(f, session, pair.public_key), digest, signature));
}

void UseFarmConfig(const TempDir& dir, int members) {
  MakeFarm(dir.path(), members);
  ConfigSpec spec;
  spec.members = FarmMembers(members);
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);
}

TEST_CASE("twenty initialise-finalise runs leave no thread and refuse calls after finalize",
          "[integration]") {
  TempDir dir;
  UseFarmConfig(dir, 2);
  CK_FUNCTION_LIST* f = P11ha();
  const int threads = ThreadCount();

  CK_SESSION_HANDLE last_session = CK_INVALID_HANDLE;
  for (int run = 1; run <= 20; ++run) {
    INFO("run " << run);
    REQUIRE(Initialize() == CKR_OK);
    SignOnce(f, "lifecycle run " + std::to_string(run));
    last_session = OpenSession(f);
    REQUIRE(f->C_Finalize(nullptr) == CKR_OK);
    // The health monitor and the call workers are p11ha's threads; C_Finalize must have
    // joined them.
    CHECK(ThreadCountSettlesTo(threads));
  }

  CK_INFO info{};
  CHECK(f->C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_ULONG count = 0;
  CHECK(f->C_GetSlotList(CK_TRUE, nullptr, &count) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  CHECK(f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &session) ==
        CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_SESSION_INFO session_info{};
  CHECK(f->C_GetSessionInfo(last_session, &session_info) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  CHECK(f->C_SignInit(last_session, &mechanism, 1) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(f->C_Finalize(nullptr) == CKR_CRYPTOKI_NOT_INITIALIZED);
}

TEST_CASE("an application that forbids library threads gets none", "[integration]") {
  TempDir dir;
  UseFarmConfig(dir, 2);
  CK_FUNCTION_LIST* f = P11ha();
  const int threads = ThreadCount();
  // GnuTLS asks for this; members are then probed by the calling threads.
  REQUIRE(Initialize(CKF_LIBRARY_CANT_CREATE_OS_THREADS) == CKR_OK);
  CHECK(ThreadCount() == threads);
  SignOnce(f, "no threads");
  CHECK(ThreadCount() == threads);
  {
    // A token key is copied to the other member on this thread, not on a worker.
    const CK_SESSION_HANDLE session = OpenSession(f);
    const CK_RV login = Login(f, session, kUserPin);  // SignOnce's login still holds
    REQUIRE((login == CKR_OK || login == CKR_USER_ALREADY_LOGGED_IN));
    GenerateP256(f, session, /*on_token=*/true, "replicated without threads");
    CHECK(ThreadCount() == threads);
  }
  REQUIRE(f->C_Finalize(nullptr) == CKR_OK);
  CHECK(ThreadCount() == threads);
}

// Exit codes of the forked child, for the parent's message.
constexpr const char* kChildSteps =
    "10 C_GetSessionInfo(parent's session) was not CKR_CRYPTOKI_NOT_INITIALIZED, "
    "11 C_OpenSession was not CKR_CRYPTOKI_NOT_INITIALIZED, 12 C_Initialize failed, "
    "13 C_OpenSession failed, 14 C_Login failed, 15 the parent's key was not found once, "
    "16 C_Sign failed, 17 the signature did not verify, 18 C_Finalize failed, "
    "19 C_Finalize before C_Initialize was not CKR_CRYPTOKI_NOT_INITIALIZED";

// The child's side: plain calls and an exit code, since Catch cannot report from a fork.
int ChildBody(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE inherited, const std::string& label,
              const Bytes& point) {
  CK_SESSION_INFO info{};
  if (f->C_GetSessionInfo(inherited, &info) != CKR_CRYPTOKI_NOT_INITIALIZED) return 10;
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  if (f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session) !=
      CKR_CRYPTOKI_NOT_INITIALIZED)
    return 11;
  if (f->C_Finalize(nullptr) != CKR_CRYPTOKI_NOT_INITIALIZED) return 19;
  if (Initialize() != CKR_OK) return 12;
  if (f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session) !=
      CKR_OK)
    return 13;
  if (Login(f, session, kUserPin) != CKR_OK) return 14;
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  std::string label_copy = label;
  CK_ATTRIBUTE query[] = {{CKA_CLASS, &private_class, sizeof private_class},
                          {CKA_LABEL, label_copy.data(), label_copy.size()}};
  CK_OBJECT_HANDLE found[4] = {};
  CK_ULONG count = 0;
  if (f->C_FindObjectsInit(session, query, std::size(query)) != CKR_OK ||
      f->C_FindObjects(session, found, std::size(found), &count) != CKR_OK ||
      f->C_FindObjectsFinal(session) != CKR_OK || count != 1)
    return 15;
  const Digest digest = Sha256("signed by the child");
  CK_RV rv = CKR_OK;
  const Bytes signature = SignDigest(f, session, found[0], digest, &rv);
  if (rv != CKR_OK) return 16;
  if (!VerifyP256(point, digest, signature)) return 17;
  if (f->C_Finalize(nullptr) != CKR_OK) return 18;
  return 0;
}

TEST_CASE("a forked child initialises again and both processes sign", "[integration]") {
  TempDir dir;
  UseFarmConfig(dir, 2);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  // A token key, so the child finds the same key through its own p11ha run.
  const KeyPair pair = GenerateP256(f, session, /*on_token=*/true, "fork-key");
  const Bytes point = EcPoint(f, session, pair.public_key);

  std::fflush(nullptr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) _exit(ChildBody(f, session, "fork-key", point));

  // A child that hangs (a lock inherited in the locked state) must fail the test, not time
  // it out.
  int status = 0;
  const bool ended = WaitFor(
      [&] {
        pid_t done = waitpid(child, &status, WNOHANG);
        return done == child;
      },
      std::chrono::seconds(60));
  if (!ended) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
  }
  INFO("child exit codes: " << kChildSteps);
  REQUIRE(ended);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);

  // The parent's run is untouched by the child's C_Initialize and C_Finalize.
  CK_SESSION_INFO info{};
  REQUIRE(f->C_GetSessionInfo(session, &info) == CKR_OK);
  CHECK(info.state == CKS_RW_USER_FUNCTIONS);
  for (int n = 0; n < 5; ++n) {
    const Digest digest = Sha256("parent after the child " + std::to_string(n));
    CK_RV rv = CKR_OK;
    const Bytes signature = SignDigest(f, session, pair.private_key, digest, &rv);
    INFO("parent sign " << n << " -> " << RvText(rv));
    REQUIRE(rv == CKR_OK);
    CHECK(VerifyP256(point, digest, signature));
  }
  CHECK(initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
