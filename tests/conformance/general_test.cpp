// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.4 (general-purpose functions) and §5.5 (slot and token management).
#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "fixture.h"

namespace p11ha::conformance {
namespace {

std::vector<CK_SLOT_ID> AllSlots(CK_FUNCTION_LIST_PTR p11) {
  CK_ULONG count = 0;
  REQUIRE_RV(p11->C_GetSlotList(CK_FALSE, nullptr, &count), CKR_OK);
  std::vector<CK_SLOT_ID> slots(count);
  REQUIRE_RV(p11->C_GetSlotList(CK_FALSE, slots.data(), &count), CKR_OK);
  slots.resize(count);
  return slots;
}

// A slot id that no slot has, picked at run time because p11ha and SoftHSM number differently.
CK_SLOT_ID UnusedSlot(CK_FUNCTION_LIST_PTR p11) {
  const std::vector<CK_SLOT_ID> slots = AllSlots(p11);
  CK_SLOT_ID candidate = 0x7ffe0000;
  while (std::find(slots.begin(), slots.end(), candidate) != slots.end()) ++candidate;
  return candidate;
}

std::vector<CK_MECHANISM_TYPE> Mechanisms(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot) {
  CK_ULONG count = 0;
  REQUIRE_RV(p11->C_GetMechanismList(slot, nullptr, &count), CKR_OK);
  std::vector<CK_MECHANISM_TYPE> mechanisms(count);
  REQUIRE_RV(p11->C_GetMechanismList(slot, mechanisms.data(), &count), CKR_OK);
  mechanisms.resize(count);
  return mechanisms;
}

// Re-initialises the module when a case that finalised it ends, even on a failed REQUIRE.
class ReinitializeOnExit {
 public:
  ReinitializeOnExit() = default;
  ReinitializeOnExit(const ReinitializeOnExit&) = delete;
  ReinitializeOnExit& operator=(const ReinitializeOnExit&) = delete;
  ~ReinitializeOnExit() {
    if (armed_) InitializeModule();
  }
  void Disarm() { armed_ = false; }

 private:
  bool armed_ = true;
};

TEST_CASE_METHOD(Fixture, "C_GetInfo reports Cryptoki 2.x", "[conformance][general]") {
  CK_INFO info{};
  REQUIRE_RV(p11->C_GetInfo(&info), CKR_OK);
  CHECK(info.cryptokiVersion.major == 2);
  CHECK(info.flags == 0);  // reserved, must be zero
  CHECK(p11->version.major == 2);
}

TEST_CASE_METHOD(Fixture, "C_Initialize twice returns CKR_CRYPTOKI_ALREADY_INITIALIZED",
                 "[conformance][general]") {
  REQUIRE_RV(InitializeModule(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  // The failed call must leave the module usable.
  CK_INFO info{};
  CHECK_RV(p11->C_GetInfo(&info), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "Calls after C_Finalize return CKR_CRYPTOKI_NOT_INITIALIZED",
                 "[conformance][general]") {
  ReinitializeOnExit reinitialize;  // harmless if the module is still initialised
  CK_ULONG reserved = 0;
  REQUIRE_RV(p11->C_Finalize(&reserved), CKR_ARGUMENTS_BAD);  // pReserved must be NULL
  REQUIRE_RV(p11->C_Finalize(nullptr), CKR_OK);

  CK_INFO info{};
  CHECK_RV(p11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_ULONG count = 0;
  CHECK_RV(p11->C_GetSlotList(CK_TRUE, nullptr, &count), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_TOKEN_INFO token{};
  CHECK_RV(p11->C_GetTokenInfo(slot, &token), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_OpenSession(slot, kRwFlags, nullptr, nullptr, &session),
           CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(p11->C_Finalize(nullptr), CKR_CRYPTOKI_NOT_INITIALIZED);

  REQUIRE_RV(InitializeModule(), CKR_OK);
  reinitialize.Disarm();
  // The virtual slot id is a stable contract; SoftHSM derives its ids from token serials.
  CHECK(FindSlot(p11, CurrentTarget().token_label) == slot);
  Session session_after = OpenLoggedIn();
  CHECK(session_after.State() == CKS_RW_USER_FUNCTIONS);
}

TEST_CASE_METHOD(Fixture, "C_GetSlotList size query, fill and CKR_BUFFER_TOO_SMALL",
                 "[conformance][general]") {
  CK_ULONG count = 0;
  REQUIRE_RV(p11->C_GetSlotList(CK_TRUE, nullptr, &count), CKR_OK);
  REQUIRE(count >= 1);

  std::vector<CK_SLOT_ID> slots(count);
  CK_ULONG filled = count;
  REQUIRE_RV(p11->C_GetSlotList(CK_TRUE, slots.data(), &filled), CKR_OK);
  CHECK(filled == count);
  CHECK(std::find(slots.begin(), slots.end(), slot) != slots.end());

  std::vector<CK_SLOT_ID> too_small(count);
  CK_ULONG small_count = count - 1;
  REQUIRE_RV(p11->C_GetSlotList(CK_TRUE, too_small.data(), &small_count), CKR_BUFFER_TOO_SMALL);
  CHECK(small_count == count);

  // Every slot with a token is also a slot.
  CHECK(AllSlots(p11).size() >= count);
}

TEST_CASE_METHOD(Fixture, "C_GetSlotInfo and C_GetTokenInfo describe an initialised token",
                 "[conformance][general]") {
  CK_SLOT_INFO slot_info{};
  REQUIRE_RV(p11->C_GetSlotInfo(slot, &slot_info), CKR_OK);
  CHECK((slot_info.flags & CKF_TOKEN_PRESENT) != 0);

  CK_TOKEN_INFO token{};
  REQUIRE_RV(p11->C_GetTokenInfo(slot, &token), CKR_OK);
  CHECK((token.flags & CKF_TOKEN_INITIALIZED) != 0);
  CHECK((token.flags & CKF_USER_PIN_INITIALIZED) != 0);
  CHECK((token.flags & CKF_LOGIN_REQUIRED) != 0);
  CHECK((token.flags & CKF_RNG) != 0);
  CHECK((token.flags & CKF_USER_PIN_LOCKED) == 0);
  CHECK(token.ulMinPinLen <= kUserPin.size());
  CHECK(token.ulMaxPinLen >= kSoPin.size());
  std::string label(reinterpret_cast<const char*>(token.label), sizeof token.label);
  label.erase(label.find_last_not_of(' ') + 1);
  CHECK(label == CurrentTarget().token_label);
}

TEST_CASE_METHOD(Fixture, "C_GetMechanismList size query and the mechanisms the suite needs",
                 "[conformance][general]") {
  CK_ULONG count = 0;
  REQUIRE_RV(p11->C_GetMechanismList(slot, nullptr, &count), CKR_OK);
  REQUIRE(count > 0);
  std::vector<CK_MECHANISM_TYPE> too_small(count);
  CK_ULONG small_count = count - 1;
  REQUIRE_RV(p11->C_GetMechanismList(slot, too_small.data(), &small_count),
             CKR_BUFFER_TOO_SMALL);
  CHECK(small_count == count);

  const std::vector<CK_MECHANISM_TYPE> mechanisms = Mechanisms(p11, slot);
  CHECK(mechanisms.size() == count);
  for (CK_MECHANISM_TYPE wanted :
       {CKM_RSA_PKCS, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS_PSS,
        CKM_SHA256_RSA_PKCS_PSS, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, CKM_AES_KEY_GEN, CKM_AES_GCM, CKM_AES_CBC_PAD, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD,
        CKM_SHA256}) {
    INFO("mechanism 0x" << std::hex << wanted);
    CHECK(std::find(mechanisms.begin(), mechanisms.end(), wanted) != mechanisms.end());
  }
}

TEST_CASE_METHOD(Fixture, "C_GetMechanismInfo for RSA key generation is sane",
                 "[conformance][general]") {
  CK_MECHANISM_INFO info{};
  REQUIRE_RV(p11->C_GetMechanismInfo(slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &info), CKR_OK);
  CHECK(info.ulMinKeySize >= 512);
  CHECK(info.ulMinKeySize <= 2048);
  CHECK(info.ulMaxKeySize >= 4096);
  CHECK((info.flags & CKF_GENERATE_KEY_PAIR) != 0);

  REQUIRE_RV(p11->C_GetMechanismInfo(slot, CKM_AES_GCM, &info), CKR_OK);
  CHECK((info.flags & CKF_ENCRYPT) != 0);
  CHECK((info.flags & CKF_DECRYPT) != 0);
  CHECK(info.ulMaxKeySize >= 32);  // AES sizes are in bytes

  REQUIRE_RV(p11->C_GetMechanismInfo(slot, CKM_ECDSA, &info), CKR_OK);
  CHECK((info.flags & CKF_SIGN) != 0);
  CHECK((info.flags & CKF_VERIFY) != 0);
}

TEST_CASE_METHOD(Fixture, "An unknown slot id returns CKR_SLOT_ID_INVALID",
                 "[conformance][general]") {
  const CK_SLOT_ID unused = UnusedSlot(p11);
  CK_SLOT_INFO slot_info{};
  CHECK_RV(p11->C_GetSlotInfo(unused, &slot_info), CKR_SLOT_ID_INVALID);
  CK_TOKEN_INFO token{};
  CHECK_RV(p11->C_GetTokenInfo(unused, &token), CKR_SLOT_ID_INVALID);
  CK_ULONG count = 0;
  CHECK_RV(p11->C_GetMechanismList(unused, nullptr, &count), CKR_SLOT_ID_INVALID);
  CK_MECHANISM_INFO info{};
  CHECK_RV(p11->C_GetMechanismInfo(unused, CKM_SHA256, &info), CKR_SLOT_ID_INVALID);
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_OpenSession(unused, kRwFlags, nullptr, nullptr, &session),
           CKR_SLOT_ID_INVALID);
  CHECK_RV(p11->C_CloseAllSessions(unused), CKR_SLOT_ID_INVALID);
}

TEST_CASE_METHOD(Fixture, "An unknown mechanism returns CKR_MECHANISM_INVALID",
                 "[conformance][general]") {
  CK_MECHANISM_INFO info{};
  CHECK_RV(p11->C_GetMechanismInfo(slot, CKM_VENDOR_DEFINED | 0x4242, &info),
           CKR_MECHANISM_INVALID);
}

}  // namespace
}  // namespace p11ha::conformance
