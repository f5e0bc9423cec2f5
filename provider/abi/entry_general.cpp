// SPDX-License-Identifier: Apache-2.0
// General-purpose, slot and token functions (PKCS#11 2.40 §5.4-5.5).
#include <cstring>
#include <mutex>

#include "config/config.h"
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {
namespace {

// Serialises C_Initialize and C_Finalize with each other only; no other call takes it.
std::mutex& LifecycleMutex() {
  static std::mutex mu;
  return mu;
}

CK_RV CheckInitArgs(CK_VOID_PTR raw) {
  if (raw == nullptr) return CKR_OK;
  auto* args = static_cast<CK_C_INITIALIZE_ARGS*>(raw);
  if (args->pReserved != nullptr) return CKR_ARGUMENTS_BAD;
  int supplied = (args->CreateMutex != nullptr) + (args->DestroyMutex != nullptr) + (args->LockMutex != nullptr) +
                 (args->UnlockMutex != nullptr);
  if (supplied != 0 && supplied != 4) return CKR_ARGUMENTS_BAD;
  // p11ha locks with the OS; it cannot work with only an application's mutex callbacks.
  if (supplied == 4 && !(args->flags & CKF_OS_LOCKING_OK)) return CKR_CANT_LOCK;
  return CKR_OK;
}

// GnuTLS (p11tool) forbids library threads; members are then probed by calling threads.
bool MayCreateThreads(CK_VOID_PTR raw) {
  return raw == nullptr || !(static_cast<CK_C_INITIALIZE_ARGS*>(raw)->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS);
}

void Pad(unsigned char* field, std::size_t size, const char* text) {
  std::memset(field, ' ', size);
  std::memcpy(field, text, std::min(size, std::strlen(text)));
}

}  // namespace

// §5.4 C_Initialize
CK_RV C_Initialize(CK_VOID_PTR pInitArgs) {
  return Guard("C_Initialize", [&]() -> CK_RV {
    if (CK_RV rv = CheckInitArgs(pInitArgs); rv != CKR_OK) return rv;
    std::lock_guard lock(LifecycleMutex());
    if (Module::Current()) return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    config::Config config;
    try {
      config = config::LoadConfig(config::DefaultConfigPath());
      log::Configure(config.log_level, config.log_file);
    } catch (const std::exception& e) {
      log::Get()->error("C_Initialize: {}", e.what());
      return CKR_FUNCTION_FAILED;
    }
    auto module = std::make_shared<Module>(std::move(config));
    try {
      module->Start(MayCreateThreads(pInitArgs));
    } catch (const CkError& e) {
      log::Get()->error("C_Initialize: {}", e.what());
      module.reset();
      log::Reset();
      return CKR_FUNCTION_FAILED;
    }
    Module::Install(std::move(module));
    return CKR_OK;
  });
}

// §5.4 C_Finalize
CK_RV C_Finalize(CK_VOID_PTR pReserved) {
  return Guard("C_Finalize", [&]() -> CK_RV {
    if (pReserved != nullptr) return CKR_ARGUMENTS_BAD;
    std::lock_guard lock(LifecycleMutex());
    auto module = Module::Uninstall();
    if (!module) return CKR_CRYPTOKI_NOT_INITIALIZED;
    module->Stop();
    module.reset();
    log::Reset();
    return CKR_OK;
  });
}

// §5.4 C_GetInfo
CK_RV C_GetInfo(CK_INFO_PTR pInfo) {
  return WithModule("C_GetInfo", [&](Module&) -> CK_RV {
    if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
    pInfo->cryptokiVersion = {2, 40};
    Pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "p11ha");
    pInfo->flags = 0;
    Pad(pInfo->libraryDescription, sizeof pInfo->libraryDescription, "p11ha HA virtual slot");
    pInfo->libraryVersion = {0, 1};
    return CKR_OK;
  });
}

// §5.5 C_GetSlotList
CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  return WithModule("C_GetSlotList",
                    [&](Module& m) { return m.GetSlotList(tokenPresent, pSlotList, pulCount); });
}

// §5.5 C_GetSlotInfo
CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) {
  return WithModule("C_GetSlotInfo", [&](Module& m) -> CK_RV {
    if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
    m.GetSlotInfo(slotID, pInfo);
    return CKR_OK;
  });
}

// §5.5 C_GetTokenInfo
CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo) {
  return WithModule("C_GetTokenInfo", [&](Module& m) -> CK_RV {
    if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
    m.GetTokenInfo(slotID, pInfo);
    return CKR_OK;
  });
}

// §5.5 C_WaitForSlotEvent: the virtual slot's token never leaves.
CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved) {
  return WithModule("C_WaitForSlotEvent", [&](Module&) -> CK_RV {
    if (pSlot == nullptr || pReserved != nullptr) return CKR_ARGUMENTS_BAD;
    return (flags & CKF_DONT_BLOCK) ? CKR_NO_EVENT : CKR_FUNCTION_NOT_SUPPORTED;
  });
}

// §5.5 C_GetMechanismList
CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount) {
  return WithModule("C_GetMechanismList",
                    [&](Module& m) { return m.GetMechanismList(slotID, pMechanismList, pulCount); });
}

// §5.5 C_GetMechanismInfo
CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo) {
  return WithModule("C_GetMechanismInfo", [&](Module& m) -> CK_RV {
    if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
    m.GetMechanismInfo(slotID, type, pInfo);
    return CKR_OK;
  });
}

// §5.5 C_InitToken: members are initialised one by one by their admins, never through the slot.
CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR) {
  return WithModule("C_InitToken", [&](Module& m) -> CK_RV {
    if (slotID != m.config().slot_id) return CKR_SLOT_ID_INVALID;
    log::Get()->warn("C_InitToken refused: initialise each member token directly, then add it to the cluster");
    return CKR_FUNCTION_NOT_SUPPORTED;
  });
}

// §5.5 C_InitPIN
CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  return WithModule("C_InitPIN", [&](Module& m) -> CK_RV {
    if (pPin == nullptr && ulPinLen > 0) return CKR_ARGUMENTS_BAD;
    return m.InitPin(hSession, {pPin, ulPinLen});
  });
}

// §5.5 C_SetPIN
CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
               CK_ULONG ulNewLen) {
  return WithModule("C_SetPIN", [&](Module& m) -> CK_RV {
    if ((pOldPin == nullptr && ulOldLen > 0) || (pNewPin == nullptr && ulNewLen > 0)) return CKR_ARGUMENTS_BAD;
    return m.SetPin(hSession, {pOldPin, ulOldLen}, {pNewPin, ulNewLen});
  });
}

}  // namespace p11ha::abi
