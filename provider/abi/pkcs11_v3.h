// SPDX-License-Identifier: Apache-2.0
// PKCS#11 3.0 types that p11-kit 0.24's 2.40 header lacks: interfaces and the 3.0 function list.
#pragma once

#include <p11-kit/pkcs11.h>

extern "C" {

#ifndef CKF_INTERFACE_FORK_SAFE
typedef struct CK_INTERFACE {
  CK_CHAR* pInterfaceName;
  CK_VOID_PTR pFunctionList;
  CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE* CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR* CK_INTERFACE_PTR_PTR;
#define CKF_INTERFACE_FORK_SAFE 0x00000001UL
#endif

typedef CK_RV (*P11HA_C_GetInterfaceList)(CK_INTERFACE_PTR, CK_ULONG_PTR);
typedef CK_RV (*P11HA_C_GetInterface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
typedef CK_RV (*P11HA_C_LoginUser)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR,
                                   CK_ULONG);
typedef CK_RV (*P11HA_C_SessionCancel)(CK_SESSION_HANDLE, CK_FLAGS);
typedef CK_RV (*P11HA_C_MessageInit)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
typedef CK_RV (*P11HA_C_CryptMessage)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,
                                      CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*P11HA_C_CryptMessageBegin)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
typedef CK_RV (*P11HA_C_CryptMessageNext)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
                                          CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
typedef CK_RV (*P11HA_C_MessageFinal)(CK_SESSION_HANDLE);
typedef CK_RV (*P11HA_C_SignMessage)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,
                                     CK_ULONG_PTR);
typedef CK_RV (*P11HA_C_MessageBegin)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
typedef CK_RV (*P11HA_C_VerifyMessage)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,
                                       CK_ULONG);

// The 3.0 list is the 2.40 list followed by the 3.0 functions; a nested CK_FUNCTION_LIST has
// the same layout because every field after the version is a pointer.
struct P11haFunctionList30 {
  CK_FUNCTION_LIST v240;
  P11HA_C_GetInterfaceList C_GetInterfaceList;
  P11HA_C_GetInterface C_GetInterface;
  P11HA_C_LoginUser C_LoginUser;
  P11HA_C_SessionCancel C_SessionCancel;
  P11HA_C_MessageInit C_MessageEncryptInit;
  P11HA_C_CryptMessage C_EncryptMessage;
  P11HA_C_CryptMessageBegin C_EncryptMessageBegin;
  P11HA_C_CryptMessageNext C_EncryptMessageNext;
  P11HA_C_MessageFinal C_MessageEncryptFinal;
  P11HA_C_MessageInit C_MessageDecryptInit;
  P11HA_C_CryptMessage C_DecryptMessage;
  P11HA_C_CryptMessageBegin C_DecryptMessageBegin;
  P11HA_C_CryptMessageNext C_DecryptMessageNext;
  P11HA_C_MessageFinal C_MessageDecryptFinal;
  P11HA_C_MessageInit C_MessageSignInit;
  P11HA_C_SignMessage C_SignMessage;
  P11HA_C_MessageBegin C_SignMessageBegin;
  P11HA_C_SignMessage C_SignMessageNext;
  P11HA_C_MessageFinal C_MessageSignFinal;
  P11HA_C_MessageInit C_MessageVerifyInit;
  P11HA_C_VerifyMessage C_VerifyMessage;
  P11HA_C_MessageBegin C_VerifyMessageBegin;
  P11HA_C_VerifyMessage C_VerifyMessageNext;
  P11HA_C_MessageFinal C_MessageVerifyFinal;
};

}  // extern "C"
