// SPDX-License-Identifier: Apache-2.0
// Members that are down, come back, or change PIN, seen through two staged test members
// whose faults are set through their control files (tests/fakes/test_member.h).
#include <algorithm>
#include <catch2/catch.hpp>

#include "support.h"

namespace p11ha::module_test {
namespace {

constexpr const char* kNewPin = "2468-next";

// Two test members; member 2 starts with `fault` when it is not empty. Probes every 200 ms so
// that a returning member is seen quickly.
std::string StageTwo(const TempDir& dir, const std::string& fault) {
  StageMembers(dir.path(), 2);
  if (!fault.empty()) SetMemberFault(MemberSo(dir.path(), 2), fault);
  ConfigSpec spec;
  spec.members = TestMembers(dir.path(), 2);
  spec.policy = "round-robin";
  spec.probe_interval_ms = 200;
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);
  return spec.log_file;
}

// Random bytes through p11ha until member `so` has served one successfully (round-robin
// reaches every serving member), or `timeout` passes. A test member counts injected failures
// too, so only a call that succeeded and moved the count shows the member serving.
bool ServesWithin(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& so,
                  std::chrono::milliseconds timeout) {
  return WaitFor(
      [&] {
        const int before = MemberCount(so, "C_GenerateRandom");
        CK_BYTE bytes[16];
        const CK_RV rv = f->C_GenerateRandom(session, bytes, sizeof bytes);
        return rv == CKR_OK && MemberCount(so, "C_GenerateRandom") > before;
      },
      timeout);
}

// Logs in to member token m<i> directly with plain SoftHSM, in a separate process.
CommandResult DirectLogin(const TempDir& dir, int i, const std::string& pin) {
  return Run({"pkcs11-tool", "--module", P11HA_SOFTHSM_MODULE, "--token-label",
              "m" + std::to_string(i), "--login", "--pin", pin, "--list-objects"},
             {"SOFTHSM2_CONF=" + MemberConf(dir.path(), i)});
}

TEST_CASE("a member that was down at start is logged in with the kept PIN when it returns",
          "[integration]") {
  TempDir dir;
  // `fail *` covers C_Initialize, so p11ha starts with member 2 down; unlike `dead` it is
  // lifted by `clear`.
  const std::string log_file = StageTwo(dir, "fail * CKR_DEVICE_ERROR");
  const std::string member2 = MemberSo(dir.path(), 2);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  {
    const std::string log = ReadFile(log_file);
    INFO("log file:\n" << log);
    CHECK(!LineWithAll(log, {"hsm-2", "down"}).empty());
  }

  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  CHECK(MemberCount(MemberSo(dir.path(), 1), "C_Login") >= 1);
  // A member that is down is not sent the PIN.
  CHECK(MemberCount(member2, "C_Login") == 0);

  SetMemberFault(member2, "clear");
  const bool logged_in =
      WaitFor([&] { return MemberCount(member2, "C_Login") >= 1; }, std::chrono::seconds(3));
  INFO("log file:\n" << ReadFile(log_file));
  CHECK(logged_in);
  // Serving proves the login succeeded: a refused login keeps the member down.
  CHECK(ServesWithin(f, session, member2, std::chrono::seconds(3)));
  CHECK(initialized.Finalize() == CKR_OK);
}

TEST_CASE("token management through the virtual slot is all members or none",
          "[integration]") {
  TempDir dir;
  const std::string log_file = StageTwo(dir, "fail * CKR_DEVICE_ERROR");
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;

  std::string so_pin = "12345678";
  CK_UTF8CHAR label[32];
  std::fill(std::begin(label), std::end(label), ' ');
  CHECK(f->C_InitToken(0, reinterpret_cast<CK_UTF8CHAR_PTR>(so_pin.data()), so_pin.size(),
                       label) == CKR_FUNCTION_NOT_SUPPORTED);

  const CK_SESSION_HANDLE session = OpenSession(f);
  CHECK(SetPin(f, session, kUserPin, kNewPin) == CKR_DEVICE_ERROR);
  for (int i = 1; i <= 2; ++i) {
    const CommandResult direct = DirectLogin(dir, i, kUserPin);
    INFO("token m" << i << " with the old PIN: " << direct.output);
    CHECK(direct.exit_code == 0);
  }

  // Member 2 returns; C_SetPIN is refused before it touches any member until then.
  SetMemberFault(MemberSo(dir.path(), 2), "clear");
  CK_RV rv = CKR_DEVICE_ERROR;
  WaitFor(
      [&] {
        rv = SetPin(f, session, kUserPin, kNewPin);
        return rv != CKR_DEVICE_ERROR;
      },
      std::chrono::seconds(3));
  INFO("C_SetPIN with both members up -> " << RvText(rv) << "\nlog file:\n" << ReadFile(log_file));
  REQUIRE(rv == CKR_OK);
  for (int i = 1; i <= 2; ++i) {
    const CommandResult with_new = DirectLogin(dir, i, kNewPin);
    INFO("token m" << i << " with the new PIN: " << with_new.output);
    CHECK(with_new.exit_code == 0);
    const CommandResult with_old = DirectLogin(dir, i, kUserPin);
    INFO("token m" << i << " with the old PIN: " << with_old.output);
    CHECK(with_old.exit_code != 0);
  }
  CHECK(initialized.Finalize() == CKR_OK);
}

// DESIGN.md "Login": members that join later are logged in for the application. After the
// application changed the PIN with C_SetPIN, the PIN p11ha keeps must be the new one.
TEST_CASE("a member that returns after C_SetPIN is logged in with the new PIN",
          "[integration]") {
  TempDir dir;
  const std::string log_file = StageTwo(dir, "");
  const std::string member2 = MemberSo(dir.path(), 2);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  REQUIRE(SetPin(f, session, kUserPin, kNewPin) == CKR_OK);

  // A search reaches every member; the second one finds member 2 dead and marks it down
  // without failing (member 1 answers). p11ha then re-initialises it, which lifts `dead`.
  std::string label = "nothing";
  Find(f, session, {{CKA_LABEL, label.data(), label.size()}});
  const int logins = MemberCount(member2, "C_Login");
  SetMemberFault(member2, "dead");
  Find(f, session, {{CKA_LABEL, label.data(), label.size()}});

  const bool serving = ServesWithin(f, session, member2, std::chrono::seconds(3));
  const int attempts = MemberCount(member2, "C_Login") - logins;
  INFO("member 2 got " << attempts << " C_Login calls after it returned\nlog file:\n"
                       << ReadFile(log_file));
  CHECK(serving);
  // One login for the returning member; a refused PIN is never tried again in a loop (a real
  // HSM counts failures and locks the user).
  CHECK(attempts >= 1);
  CHECK(attempts <= 2);
  CHECK(initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
