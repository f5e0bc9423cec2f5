// SPDX-License-Identifier: Apache-2.0
// The 2.40 function list, the 3.0 interface, and the only three exported symbols.
#include <cstring>

#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {
namespace {

#define P11HA_V240_FUNCTIONS                                                                                          \
  .C_Initialize = C_Initialize, .C_Finalize = C_Finalize, .C_GetInfo = C_GetInfo,                                 \
  .C_GetFunctionList = C_GetFunctionList, .C_GetSlotList = C_GetSlotList, .C_GetSlotInfo = C_GetSlotInfo,           \
  .C_GetTokenInfo = C_GetTokenInfo, .C_GetMechanismList = C_GetMechanismList,                                       \
  .C_GetMechanismInfo = C_GetMechanismInfo, .C_InitToken = C_InitToken, .C_InitPIN = C_InitPIN,                     \
  .C_SetPIN = C_SetPIN, .C_OpenSession = C_OpenSession, .C_CloseSession = C_CloseSession,                           \
  .C_CloseAllSessions = C_CloseAllSessions, .C_GetSessionInfo = C_GetSessionInfo,                                   \
  .C_GetOperationState = C_GetOperationState, .C_SetOperationState = C_SetOperationState, .C_Login = C_Login,       \
  .C_Logout = C_Logout, .C_CreateObject = C_CreateObject, .C_CopyObject = C_CopyObject,                             \
  .C_DestroyObject = C_DestroyObject, .C_GetObjectSize = C_GetObjectSize,                                           \
  .C_GetAttributeValue = C_GetAttributeValue, .C_SetAttributeValue = C_SetAttributeValue,                           \
  .C_FindObjectsInit = C_FindObjectsInit, .C_FindObjects = C_FindObjects,                                           \
  .C_FindObjectsFinal = C_FindObjectsFinal, .C_EncryptInit = C_EncryptInit, .C_Encrypt = C_Encrypt,                 \
  .C_EncryptUpdate = C_EncryptUpdate, .C_EncryptFinal = C_EncryptFinal, .C_DecryptInit = C_DecryptInit,             \
  .C_Decrypt = C_Decrypt, .C_DecryptUpdate = C_DecryptUpdate, .C_DecryptFinal = C_DecryptFinal,                     \
  .C_DigestInit = C_DigestInit, .C_Digest = C_Digest, .C_DigestUpdate = C_DigestUpdate,                             \
  .C_DigestKey = C_DigestKey, .C_DigestFinal = C_DigestFinal, .C_SignInit = C_SignInit, .C_Sign = C_Sign,           \
  .C_SignUpdate = C_SignUpdate, .C_SignFinal = C_SignFinal, .C_SignRecoverInit = C_SignRecoverInit,                 \
  .C_SignRecover = C_SignRecover, .C_VerifyInit = C_VerifyInit, .C_Verify = C_Verify,                               \
  .C_VerifyUpdate = C_VerifyUpdate, .C_VerifyFinal = C_VerifyFinal, .C_VerifyRecoverInit = C_VerifyRecoverInit,     \
  .C_VerifyRecover = C_VerifyRecover, .C_DigestEncryptUpdate = C_DigestEncryptUpdate,                               \
  .C_DecryptDigestUpdate = C_DecryptDigestUpdate, .C_SignEncryptUpdate = C_SignEncryptUpdate,                       \
  .C_DecryptVerifyUpdate = C_DecryptVerifyUpdate, .C_GenerateKey = C_GenerateKey,                                   \
  .C_GenerateKeyPair = C_GenerateKeyPair, .C_WrapKey = C_WrapKey, .C_UnwrapKey = C_UnwrapKey,                       \
  .C_DeriveKey = C_DeriveKey, .C_SeedRandom = C_SeedRandom, .C_GenerateRandom = C_GenerateRandom,                   \
  .C_GetFunctionStatus = C_GetFunctionStatus, .C_CancelFunction = C_CancelFunction,                                 \
  .C_WaitForSlotEvent = C_WaitForSlotEvent

// Designated initialisers make the compiler check the order against the header.
CK_FUNCTION_LIST kFunctionList240 = {.version = {2, 40}, P11HA_V240_FUNCTIONS};

P11haFunctionList30 kFunctionList30 = {
    .v240 = {.version = {3, 0}, P11HA_V240_FUNCTIONS},
    .C_GetInterfaceList = C_GetInterfaceList,
    .C_GetInterface = C_GetInterface,
    .C_LoginUser = C_LoginUser,
    .C_SessionCancel = C_SessionCancel,
    .C_MessageEncryptInit = C_MessageInit,
    .C_EncryptMessage = C_CryptMessage,
    .C_EncryptMessageBegin = C_CryptMessageBegin,
    .C_EncryptMessageNext = C_CryptMessageNext,
    .C_MessageEncryptFinal = C_MessageFinal,
    .C_MessageDecryptInit = C_MessageInit,
    .C_DecryptMessage = C_CryptMessage,
    .C_DecryptMessageBegin = C_CryptMessageBegin,
    .C_DecryptMessageNext = C_CryptMessageNext,
    .C_MessageDecryptFinal = C_MessageFinal,
    .C_MessageSignInit = C_MessageInit,
    .C_SignMessage = C_SignMessage,
    .C_SignMessageBegin = C_MessageBegin,
    .C_SignMessageNext = C_SignMessage,
    .C_MessageSignFinal = C_MessageFinal,
    .C_MessageVerifyInit = C_MessageInit,
    .C_VerifyMessage = C_VerifyMessage,
    .C_VerifyMessageBegin = C_MessageBegin,
    .C_VerifyMessageNext = C_VerifyMessage,
    .C_MessageVerifyFinal = C_MessageFinal,
};
#undef P11HA_V240_FUNCTIONS

CK_CHAR kInterfaceName[] = "PKCS 11";

// The 3.0 interface first: C_GetInterface(NULL, ...) returns the default, the first one.
CK_INTERFACE kInterfaces[] = {
    {kInterfaceName, &kFunctionList30, 0},
    {kInterfaceName, &kFunctionList240, 0},
};
constexpr CK_ULONG kInterfaceCount = sizeof kInterfaces / sizeof kInterfaces[0];

CK_VERSION VersionOf(const CK_INTERFACE& interface) {
  return static_cast<const CK_FUNCTION_LIST*>(interface.pFunctionList)->version;
}

}  // namespace

// §5.4 C_GetFunctionList: valid before C_Initialize.
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (ppFunctionList == nullptr) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &kFunctionList240;
  return CKR_OK;
}

// PKCS#11 3.0 §5.4 C_GetInterfaceList
CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount) {
  if (pulCount == nullptr) return CKR_ARGUMENTS_BAD;
  if (pInterfacesList == nullptr) {
    *pulCount = kInterfaceCount;
    return CKR_OK;
  }
  if (*pulCount < kInterfaceCount) {
    *pulCount = kInterfaceCount;
    return CKR_BUFFER_TOO_SMALL;
  }
  std::memcpy(pInterfacesList, kInterfaces, sizeof kInterfaces);
  *pulCount = kInterfaceCount;
  return CKR_OK;
}

// PKCS#11 3.0 §5.4 C_GetInterface
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
                     CK_FLAGS flags) {
  if (ppInterface == nullptr) return CKR_ARGUMENTS_BAD;
  for (CK_INTERFACE& interface : kInterfaces) {
    if (pInterfaceName != nullptr &&
        std::strcmp(reinterpret_cast<const char*>(pInterfaceName), reinterpret_cast<const char*>(kInterfaceName)) != 0)
      continue;
    CK_VERSION version = VersionOf(interface);
    if (pVersion != nullptr && (pVersion->major != version.major || pVersion->minor != version.minor)) continue;
    if ((interface.flags & flags) != flags) continue;
    *ppInterface = &interface;
    return CKR_OK;
  }
  return CKR_ARGUMENTS_BAD;
}

}  // namespace p11ha::abi

extern "C" {

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  return p11ha::abi::C_GetFunctionList(ppFunctionList);
}

__attribute__((visibility("default"))) CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList,
                                                                CK_ULONG_PTR pulCount) {
  return p11ha::abi::C_GetInterfaceList(pInterfacesList, pulCount);
}

__attribute__((visibility("default"))) CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                                            CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags) {
  return p11ha::abi::C_GetInterface(pInterfaceName, pVersion, ppInterface, flags);
}

}  // extern "C"
