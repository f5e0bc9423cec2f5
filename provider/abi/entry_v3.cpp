// SPDX-License-Identifier: Apache-2.0
// PKCS#11 3.0-only functions. Members are loaded through p11-kit 0.24, which offers only their
// 2.40 function lists, so no member can serve these: the answer is CKR_FUNCTION_NOT_SUPPORTED.
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {
namespace {

CK_RV Unsupported(const char* name) {
  return WithModule(name, [&](Module& m) {
    return m.AllMembersSupportV3() ? CKR_GENERAL_ERROR : CKR_FUNCTION_NOT_SUPPORTED;
  });
}

}  // namespace

CK_RV C_LoginUser(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG) {
  return Unsupported("C_LoginUser");
}
CK_RV C_SessionCancel(CK_SESSION_HANDLE, CK_FLAGS) { return Unsupported("C_SessionCancel"); }
CK_RV C_MessageInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) { return Unsupported("C_Message*Init"); }
CK_RV C_CryptMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
                     CK_BYTE_PTR, CK_ULONG_PTR) {
  return Unsupported("C_*cryptMessage");
}
CK_RV C_CryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) {
  return Unsupported("C_*cryptMessageBegin");
}
CK_RV C_CryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR,
                         CK_FLAGS) {
  return Unsupported("C_*cryptMessageNext");
}
CK_RV C_MessageFinal(CK_SESSION_HANDLE) { return Unsupported("C_Message*Final"); }
CK_RV C_SignMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) {
  return Unsupported("C_SignMessage*");
}
CK_RV C_MessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG) { return Unsupported("C_*MessageBegin"); }
CK_RV C_VerifyMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) {
  return Unsupported("C_VerifyMessage*");
}

}  // namespace p11ha::abi
