// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.1 and the per-function error lists: NULL arguments where the spec wants
// CKR_ARGUMENTS_BAD, and calls on sessions that no longer exist.
#include <catch2/catch.hpp>
#include <string>

#include "fixture.h"

namespace p11ha::conformance {
namespace {

TEST_CASE_METHOD(Fixture, "NULL output pointers return CKR_ARGUMENTS_BAD", "[conformance][errors]") {
  CHECK_RV(p11->C_GetInfo(nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GetSlotList(CK_TRUE, nullptr, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GetSlotInfo(slot, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GetTokenInfo(slot, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GetMechanismList(slot, nullptr, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GetMechanismInfo(slot, CKM_SHA256, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_OpenSession(slot, kRwFlags, nullptr, nullptr, nullptr), CKR_ARGUMENTS_BAD);

  Session session = Open();
  CHECK_RV(p11->C_GetSessionInfo(session, nullptr), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_Login(session, CKU_USER, nullptr, 4), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_GenerateRandom(session, nullptr, 16), CKR_ARGUMENTS_BAD);
}

TEST_CASE_METHOD(Fixture, "NULL templates and handle buffers return CKR_ARGUMENTS_BAD",
                 "[conformance][errors]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE data = CreateData(session, "null-template", /*token=*/false);
  CHECK_RV(p11->C_GetAttributeValue(session, data, nullptr, 1), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_SetAttributeValue(session, data, nullptr, 1), CKR_ARGUMENTS_BAD);
  CK_OBJECT_HANDLE created = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_CreateObject(session, nullptr, 1, &created), CKR_ARGUMENTS_BAD);
  CHECK_RV(p11->C_FindObjectsInit(session, nullptr, 1), CKR_ARGUMENTS_BAD);

  REQUIRE_RV(p11->C_FindObjectsInit(session, nullptr, 0), CKR_OK);
  CK_ULONG count = 0;
  CHECK_RV(p11->C_FindObjects(session, nullptr, 1, &count), CKR_ARGUMENTS_BAD);
  CK_OBJECT_HANDLE found = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_FindObjects(session, &found, 1, nullptr), CKR_ARGUMENTS_BAD);
  // The search survives the bad calls.
  CHECK_RV(p11->C_FindObjects(session, &found, 1, &count), CKR_OK);
  CHECK_RV(p11->C_FindObjectsFinal(session), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "C_Sign with a NULL length pointer", "[conformance][errors][sign]") {
  Session session = OpenLoggedIn();
  const KeyPair pair = GenerateEc(session, kP256Params);
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  REQUIRE_RV(p11->C_SignInit(session, &mechanism, pair.private_key), CKR_OK);
  Bytes digest(32, 0xd1);
  Bytes signature(64);
  CHECK_RV(p11->C_Sign(session, digest.data(), digest.size(), signature.data(), nullptr),
           CKR_ARGUMENTS_BAD);
  // PKCS#11 2.40 §5.2 says any error other than CKR_BUFFER_TOO_SMALL ends the operation;
  // SoftHSM 2.6.1 checks arguments first and leaves it active.
  CK_ULONG length = signature.size();
  CHECK_RV(p11->C_Sign(session, digest.data(), digest.size(), signature.data(), &length), CKR_OK);
  CHECK(length == 64);
}

TEST_CASE_METHOD(Fixture, "A closed session is gone for every function", "[conformance][errors]") {
  Session keep_open = OpenLoggedIn();  // keeps the token logged in across the close
  Session doomed = Open();
  const CK_SESSION_HANDLE handle = doomed.get();
  REQUIRE_RV(doomed.Close(), CKR_OK);

  CK_SESSION_INFO info{};
  CHECK_RV(p11->C_GetSessionInfo(handle, &info), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(p11->C_CloseSession(handle), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(p11->C_Logout(handle), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(p11->C_FindObjectsInit(handle, nullptr, 0), CKR_SESSION_HANDLE_INVALID);
  Bytes random(16);
  CHECK_RV(p11->C_GenerateRandom(handle, random.data(), random.size()),
           CKR_SESSION_HANDLE_INVALID);
  CK_MECHANISM digest{CKM_SHA256, nullptr, 0};
  CHECK_RV(p11->C_DigestInit(handle, &digest), CKR_SESSION_HANDLE_INVALID);
  const KeyPair pair = GenerateEc(keep_open, kP256Params);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  CHECK_RV(p11->C_SignInit(handle, &ecdsa, pair.private_key), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(p11->C_DestroyObject(handle, pair.public_key), CKR_SESSION_HANDLE_INVALID);

  // Closing that session did not log the others out.
  CHECK(keep_open.State() == CKS_RW_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "An operation is bound to its session", "[conformance][errors]") {
  Session first = OpenLoggedIn();
  Session second = Open();
  CK_MECHANISM digest{CKM_SHA256, nullptr, 0};
  REQUIRE_RV(p11->C_DigestInit(first, &digest), CKR_OK);
  Bytes data = ToBytes("abc");
  CHECK_RV(p11->C_DigestUpdate(second, data.data(), data.size()), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(p11->C_DigestUpdate(first, data.data(), data.size()), CKR_OK);
}

}  // namespace
}  // namespace p11ha::conformance
