// SPDX-License-Identifier: Apache-2.0
// Object management (PKCS#11 2.40 §5.7).
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {

// §5.7 C_CreateObject
CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                     CK_OBJECT_HANDLE_PTR phObject) {
  return WithModule("C_CreateObject", [&](Module& m) { return m.CreateObject(hSession, pTemplate, ulCount, phObject); });
}

// §5.7 C_CopyObject
CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                   CK_OBJECT_HANDLE_PTR phNewObject) {
  return WithModule("C_CopyObject",
                    [&](Module& m) { return m.CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject); });
}

// §5.7 C_DestroyObject
CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject) {
  return WithModule("C_DestroyObject", [&](Module& m) { return m.DestroyObject(hSession, hObject); });
}

// §5.7 C_GetObjectSize
CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize) {
  return WithModule("C_GetObjectSize", [&](Module& m) { return m.GetObjectSize(hSession, hObject, pulSize); });
}

// §5.7 C_GetAttributeValue
CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount) {
  return WithModule("C_GetAttributeValue",
                    [&](Module& m) { return m.GetAttributeValue(hSession, hObject, pTemplate, ulCount); });
}

// §5.7 C_SetAttributeValue
CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount) {
  return WithModule("C_SetAttributeValue",
                    [&](Module& m) { return m.SetAttributeValue(hSession, hObject, pTemplate, ulCount); });
}

// §5.7 C_FindObjectsInit
CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  return WithModule("C_FindObjectsInit", [&](Module& m) { return m.FindObjectsInit(hSession, pTemplate, ulCount); });
}

// §5.7 C_FindObjects
CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                    CK_ULONG_PTR pulObjectCount) {
  return WithModule("C_FindObjects",
                    [&](Module& m) { return m.FindObjects(hSession, phObject, ulMaxObjectCount, pulObjectCount); });
}

// §5.7 C_FindObjectsFinal
CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession) {
  return WithModule("C_FindObjectsFinal", [&](Module& m) { return m.FindObjectsFinal(hSession); });
}

}  // namespace p11ha::abi
