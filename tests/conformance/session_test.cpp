// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.6 (session management) and login: one login covers every session of the
// application on the token, and the last session to close logs it out.
#include <catch2/catch.hpp>
#include <string>

#include "fixture.h"

namespace p11ha::conformance {
namespace {

// SoftHSM answers CKR_OK; the spec and p11ha say CKR_USER_NOT_LOGGED_IN.
constexpr Divergence kLogoutNotLoggedIn{"logout-not-logged-in", /*softhsm=*/CKR_OK,
                                        /*p11ha=*/CKR_USER_NOT_LOGGED_IN};

CK_RV Login(CK_FUNCTION_LIST_PTR p11, CK_SESSION_HANDLE session, CK_USER_TYPE user,
            std::string_view pin) {
  std::string copy(pin);
  return p11->C_Login(session, user, reinterpret_cast<CK_UTF8CHAR_PTR>(copy.data()),
                      static_cast<CK_ULONG>(copy.size()));
}

TEST_CASE_METHOD(Fixture, "C_OpenSession without CKF_SERIAL_SESSION is refused",
                 "[conformance][session]") {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_OpenSession(slot, 0, nullptr, nullptr, &session),
           CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  CHECK_RV(p11->C_OpenSession(slot, CKF_RW_SESSION, nullptr, nullptr, &session),
           CKR_SESSION_PARALLEL_NOT_SUPPORTED);
}

TEST_CASE_METHOD(Fixture, "C_GetSessionInfo reports slot, flags and state",
                 "[conformance][session]") {
  Session rw = Open(kRwFlags);
  CK_SESSION_INFO info{};
  REQUIRE_RV(p11->C_GetSessionInfo(rw, &info), CKR_OK);
  CHECK(info.slotID == slot);
  CHECK((info.flags & CKF_SERIAL_SESSION) != 0);
  CHECK((info.flags & CKF_RW_SESSION) != 0);
  CHECK(info.state == CKS_RW_PUBLIC_SESSION);

  Session ro = Open(kRoFlags);
  REQUIRE_RV(p11->C_GetSessionInfo(ro, &info), CKR_OK);
  CHECK((info.flags & CKF_RW_SESSION) == 0);
  CHECK(info.state == CKS_RO_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "One login covers every session, including later ones",
                 "[conformance][session][login]") {
  Session ro = Open(kRoFlags);
  Session rw = Open(kRwFlags);
  CHECK(ro.State() == CKS_RO_PUBLIC_SESSION);
  CHECK(rw.State() == CKS_RW_PUBLIC_SESSION);

  rw.Login();
  CHECK(ro.State() == CKS_RO_USER_FUNCTIONS);
  CHECK(rw.State() == CKS_RW_USER_FUNCTIONS);

  Session later_rw = Open(kRwFlags);
  Session later_ro = Open(kRoFlags);
  CHECK(later_rw.State() == CKS_RW_USER_FUNCTIONS);
  CHECK(later_ro.State() == CKS_RO_USER_FUNCTIONS);

  // Logging out through any session, even a read-only one, logs out all of them.
  REQUIRE_RV(p11->C_Logout(later_ro), CKR_OK);
  CHECK(ro.State() == CKS_RO_PUBLIC_SESSION);
  CHECK(rw.State() == CKS_RW_PUBLIC_SESSION);
  CHECK(later_rw.State() == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "Login from a read-only session", "[conformance][session][login]") {
  Session ro = Open(kRoFlags);
  ro.Login();
  CHECK(ro.State() == CKS_RO_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "A wrong PIN returns CKR_PIN_INCORRECT and changes nothing",
                 "[conformance][session][login]") {
  Session session = Open();
  CHECK_RV(Login(p11, session, CKU_USER, "4321"), CKR_PIN_INCORRECT);
  CHECK(session.State() == CKS_RW_PUBLIC_SESSION);
  CK_TOKEN_INFO token{};
  REQUIRE_RV(p11->C_GetTokenInfo(slot, &token), CKR_OK);
  CHECK((token.flags & CKF_USER_PIN_LOCKED) == 0);
  session.Login();
  CHECK(session.State() == CKS_RW_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "A second login returns CKR_USER_ALREADY_LOGGED_IN",
                 "[conformance][session][login]") {
  Session first = OpenLoggedIn();
  Session second = Open();
  CHECK_RV(Login(p11, second, CKU_USER, kUserPin), CKR_USER_ALREADY_LOGGED_IN);
  CHECK(first.State() == CKS_RW_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "SO login while the user is logged in is refused",
                 "[conformance][session][login]") {
  Session session = OpenLoggedIn();
  CHECK_RV(Login(p11, session, CKU_SO, kSoPin), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  CHECK(session.State() == CKS_RW_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "SO login with a read-only session open is refused",
                 "[conformance][session][login]") {
  Session rw = Open(kRwFlags);
  Session ro = Open(kRoFlags);
  CHECK_RV(Login(p11, rw, CKU_SO, kSoPin), CKR_SESSION_READ_ONLY_EXISTS);
  CHECK(rw.State() == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "SO sessions exclude read-only sessions and the user",
                 "[conformance][session][login]") {
  Session rw = Open(kRwFlags);
  rw.Login(CKU_SO, kSoPin);
  CHECK(rw.State() == CKS_RW_SO_FUNCTIONS);
  CK_SESSION_HANDLE ro = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_OpenSession(slot, kRoFlags, nullptr, nullptr, &ro),
           CKR_SESSION_READ_WRITE_SO_EXISTS);
  CHECK_RV(Login(p11, rw, CKU_USER, kUserPin), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  Session later = Open(kRwFlags);
  CHECK(later.State() == CKS_RW_SO_FUNCTIONS);
  REQUIRE_RV(p11->C_Logout(rw), CKR_OK);
  CHECK(later.State() == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "Closing the last session logs out", "[conformance][session][login]") {
  Session first = OpenLoggedIn();
  Session second = Open();
  REQUIRE_RV(first.Close(), CKR_OK);
  CHECK(second.State() == CKS_RW_USER_FUNCTIONS);  // one of several closed: still logged in
  REQUIRE_RV(second.Close(), CKR_OK);
  Session third = Open();
  CHECK(third.State() == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "C_CloseAllSessions closes every session and logs out",
                 "[conformance][session][login]") {
  Session a = OpenLoggedIn();
  Session b = Open(kRoFlags);
  Session c = Open(kRwFlags);
  REQUIRE_RV(p11->C_CloseAllSessions(slot), CKR_OK);
  CK_SESSION_INFO info{};
  for (CK_SESSION_HANDLE closed : {a.get(), b.get(), c.get()}) {
    CHECK_RV(p11->C_GetSessionInfo(closed, &info), CKR_SESSION_HANDLE_INVALID);
  }
  Session fresh = Open();
  CHECK(fresh.State() == CKS_RW_PUBLIC_SESSION);
  // Nothing left to close is not an error.
  CHECK_RV(p11->C_CloseAllSessions(slot), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "An invalid session handle returns CKR_SESSION_HANDLE_INVALID",
                 "[conformance][session]") {
  CK_SESSION_INFO info{};
  for (CK_SESSION_HANDLE bogus : {CK_SESSION_HANDLE{CK_INVALID_HANDLE}, kBogusHandle}) {
    CHECK_RV(p11->C_GetSessionInfo(bogus, &info), CKR_SESSION_HANDLE_INVALID);
    CHECK_RV(Login(p11, bogus, CKU_USER, kUserPin), CKR_SESSION_HANDLE_INVALID);
    CHECK_RV(p11->C_Logout(bogus), CKR_SESSION_HANDLE_INVALID);
    CHECK_RV(p11->C_CloseSession(bogus), CKR_SESSION_HANDLE_INVALID);
  }
}

TEST_CASE_METHOD(Fixture, "C_Logout when nobody is logged in", "[conformance][session][login]") {
  Session session = Open();
  CHECK_RV(p11->C_Logout(session),
           Expected(kLogoutNotLoggedIn));
  session.Login();
  REQUIRE_RV(p11->C_Logout(session), CKR_OK);
  CHECK_RV(p11->C_Logout(session),
           Expected(kLogoutNotLoggedIn));
  CHECK(session.State() == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE_METHOD(Fixture, "An unknown user type returns CKR_USER_TYPE_INVALID",
                 "[conformance][session][login]") {
  Session session = Open();
  CHECK_RV(Login(p11, session, 42, kUserPin), CKR_USER_TYPE_INVALID);
}

}  // namespace
}  // namespace p11ha::conformance
