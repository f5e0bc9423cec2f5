// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p11ha::test_member {

// The 68 entries of the PKCS#11 2.40 CK_FUNCTION_LIST, in table order.
// clang-format off
#define P11HA_TM_FUNCTIONS(X)                                                                \
  X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList) X(C_GetSlotList)           \
  X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList) X(C_GetMechanismInfo)             \
  X(C_InitToken) X(C_InitPIN) X(C_SetPIN) X(C_OpenSession) X(C_CloseSession)                 \
  X(C_CloseAllSessions) X(C_GetSessionInfo) X(C_GetOperationState) X(C_SetOperationState)    \
  X(C_Login) X(C_Logout) X(C_CreateObject) X(C_CopyObject) X(C_DestroyObject)                \
  X(C_GetObjectSize) X(C_GetAttributeValue) X(C_SetAttributeValue) X(C_FindObjectsInit)      \
  X(C_FindObjects) X(C_FindObjectsFinal) X(C_EncryptInit) X(C_Encrypt) X(C_EncryptUpdate)    \
  X(C_EncryptFinal) X(C_DecryptInit) X(C_Decrypt) X(C_DecryptUpdate) X(C_DecryptFinal)       \
  X(C_DigestInit) X(C_Digest) X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal)              \
  X(C_SignInit) X(C_Sign) X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit)                \
  X(C_SignRecover) X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal)            \
  X(C_VerifyRecoverInit) X(C_VerifyRecover) X(C_DigestEncryptUpdate)                         \
  X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate) X(C_DecryptVerifyUpdate) X(C_GenerateKey)  \
  X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey) X(C_DeriveKey) X(C_SeedRandom)            \
  X(C_GenerateRandom) X(C_GetFunctionStatus) X(C_CancelFunction) X(C_WaitForSlotEvent)
// clang-format on

enum class Fn : int {
#define P11HA_TM_ENUM(name) k##name,
  P11HA_TM_FUNCTIONS(P11HA_TM_ENUM)
#undef P11HA_TM_ENUM
};

inline constexpr std::size_t kFunctionCount = 0
#define P11HA_TM_ONE(name) +1
    P11HA_TM_FUNCTIONS(P11HA_TM_ONE)
#undef P11HA_TM_ONE
    ;
static_assert(kFunctionCount == 68, "PKCS#11 2.40 has 68 functions");

inline constexpr std::array<std::string_view, kFunctionCount> kFunctionNames = {
#define P11HA_TM_NAME(name) #name,
    P11HA_TM_FUNCTIONS(P11HA_TM_NAME)
#undef P11HA_TM_NAME
};

std::optional<Fn> FunctionFromName(std::string_view name);
std::string_view FunctionName(Fn fn);

// Accepts a CKR_ name or a number in C syntax (0x30, 48).
std::optional<CK_RV> ParseRv(std::string_view text);

// One rule of the fault spec. `function` is empty for `*`. A kRestart rule without a function
// (plain `restart`) has `any_call` set: it fires at the next call, whatever it is.
struct FaultRule {
  enum class Kind { kFail, kHang, kStall, kDead, kRestart, kClear };
  Kind kind = Kind::kClear;
  std::optional<Fn> function;  // nullopt: `*`
  CK_RV rv = CKR_OK;
  unsigned long after = 0;
  std::optional<unsigned long> times;  // nullopt: unlimited
  bool any_call = false;
};

// Parses lines or `;`-separated statements; unknown text goes to `errors`.
std::vector<FaultRule> ParseFaultSpec(std::string_view spec, std::vector<std::string>* errors);

// `*` never matches these two: a test must be able to look the module up and tear it down.
bool WildcardMatches(Fn fn);

}  // namespace p11ha::test_member
