// SPDX-License-Identifier: Apache-2.0
// Session management (PKCS#11 2.40 §5.6) and the legacy parallel functions (§5.16).
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {

// §5.6 C_OpenSession
CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE_PTR phSession) {
  return WithModule("C_OpenSession", [&](Module& m) -> CK_RV {
    if (phSession == nullptr) return CKR_ARGUMENTS_BAD;
    *phSession = m.OpenSession(slotID, flags);
    return CKR_OK;
  });
}

// §5.6 C_CloseSession
CK_RV C_CloseSession(CK_SESSION_HANDLE hSession) {
  return WithModule("C_CloseSession", [&](Module& m) { m.CloseSession(hSession); });
}

// §5.6 C_CloseAllSessions
CK_RV C_CloseAllSessions(CK_SLOT_ID slotID) {
  return WithModule("C_CloseAllSessions", [&](Module& m) { m.CloseAllSessions(slotID); });
}

// §5.6 C_GetSessionInfo
CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo) {
  return WithModule("C_GetSessionInfo", [&](Module& m) -> CK_RV {
    if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
    m.GetSessionInfo(hSession, pInfo);
    return CKR_OK;
  });
}

// §5.6 C_GetOperationState: a member's state cannot move to another member, so p11ha offers none.
CK_RV C_GetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR) {
  return WithModule("C_GetOperationState", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}

// §5.6 C_SetOperationState
CK_RV C_SetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
  return WithModule("C_SetOperationState", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}

// §5.6 C_Login
CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  return WithModule("C_Login", [&](Module& m) -> CK_RV {
    if (pPin == nullptr) return CKR_ARGUMENTS_BAD;
    return m.Login(hSession, userType, {pPin, ulPinLen});
  });
}

// §5.6 C_Logout
CK_RV C_Logout(CK_SESSION_HANDLE hSession) {
  return WithModule("C_Logout", [&](Module& m) { return m.Logout(hSession); });
}

// §5.16 C_GetFunctionStatus (legacy)
CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE) {
  return WithModule("C_GetFunctionStatus", [&](Module&) { return CKR_FUNCTION_NOT_PARALLEL; });
}

// §5.16 C_CancelFunction (legacy)
CK_RV C_CancelFunction(CK_SESSION_HANDLE) {
  return WithModule("C_CancelFunction", [&](Module&) { return CKR_FUNCTION_NOT_PARALLEL; });
}

}  // namespace p11ha::abi
