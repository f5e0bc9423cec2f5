// SPDX-License-Identifier: Apache-2.0
#include "test_member.h"

#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "fault_spec.h"
#include "member_state.h"

namespace p11ha::test_member {
namespace {

template <typename Call>
CK_RV Forward(Fn fn, Call&& call) {
  Member& member = Member::Instance();
  if (const auto injected = member.Admit(fn)) return *injected;
  return member.Forward(std::forward<Call>(call));
}

enum class Operation { kEncrypt, kDecrypt, kDigest, kSign, kVerify };

// An injected failure never reached SoftHSM, but the caller now believes the operation is over
// (PKCS#11 5.2: any error but CKR_BUFFER_TOO_SMALL ends it). End it in SoftHSM as well, so that
// the next *Init on the session does not fail with CKR_OPERATION_ACTIVE. What works on SoftHSM
// 2.6.1 (checked by the tests): Final ends a multi-part operation, done or failed. Final of a
// single-part mechanism leaves it and gives CKR_OPERATION_NOT_INITIALIZED (for RSA encryption
// CKR_FUNCTION_NOT_SUPPORTED); then Update (sign, verify) or the one-shot call with empty input
// (encrypt, decrypt) ends it. Decrypt Final with padding and no input asks for a huge buffer;
// one more input byte makes it fail, which ends it.
bool SinglePart(CK_RV final_rv) {
  return final_rv == CKR_OPERATION_NOT_INITIALIZED || final_rv == CKR_FUNCTION_NOT_SUPPORTED;
}

void EndOperation(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, Operation operation) {
  std::vector<CK_BYTE> scratch(16384);
  CK_BYTE* data = scratch.data();
  CK_ULONG length = scratch.size();
  const auto big = [&] { return &(length = scratch.size()); };
  switch (operation) {
    case Operation::kEncrypt:
      if (SinglePart(f->C_EncryptFinal(s, data, big()))) f->C_Encrypt(s, data, 0, data, big());
      break;
    case Operation::kDecrypt:
      switch (f->C_DecryptFinal(s, data, big())) {
        case CKR_BUFFER_TOO_SMALL:
          f->C_DecryptUpdate(s, data, 1, data, big());
          f->C_DecryptFinal(s, data, big());
          break;
        case CKR_OPERATION_NOT_INITIALIZED:
        case CKR_FUNCTION_NOT_SUPPORTED:
          f->C_Decrypt(s, data, 0, data, big());
          break;
        default:  // Final ended it.
          break;
      }
      break;
    case Operation::kDigest:
      f->C_DigestFinal(s, data, big());
      break;
    case Operation::kSign:
      if (SinglePart(f->C_SignFinal(s, data, big()))) f->C_SignUpdate(s, data, 0);
      break;
    case Operation::kVerify:
      if (SinglePart(f->C_VerifyFinal(s, data, length))) f->C_VerifyUpdate(s, data, 0);
      break;
  }
}

template <typename Call>
CK_RV ForwardOperation(Fn fn, CK_SESSION_HANDLE s, Operation operation, Call&& call) {
  Member& member = Member::Instance();
  Member::Admission admission;
  if (const auto injected = member.Admit(fn, &admission)) {
    // Not after a restart: the old session number may already belong to a new session.
    if (admission.end_operation && *injected != CKR_BUFFER_TOO_SMALL) {
      member.ForwardOn(admission.instance, [&](CK_FUNCTION_LIST* f) {
        EndOperation(f, s, operation);
        return CKR_OK;
      });
    }
    return *injected;
  }
  return member.ForwardServed(fn, std::forward<Call>(call));
}

#define P11HA_TM_FORWARD(name, params, args)                                        \
  CK_RV name##Impl params {                                                         \
    return Forward(Fn::k##name, [&](CK_FUNCTION_LIST* f) { return f->name args; }); \
  }

// Calls whose failure ends the active operation of session `s`.
#define P11HA_TM_OPERATION(name, operation, params, args)                       \
  CK_RV name##Impl params {                                                     \
    return ForwardOperation(Fn::k##name, s, Operation::operation,               \
                            [&](CK_FUNCTION_LIST* f) { return f->name args; }); \
  }

CK_RV C_InitializeImpl(CK_VOID_PTR init_args) {
  Member& member = Member::Instance();
  if (const auto injected = member.Admit(Fn::kC_Initialize)) return *injected;
  return member.Initialize(init_args);
}

CK_RV C_FinalizeImpl(CK_VOID_PTR reserved) {
  Member& member = Member::Instance();
  if (const auto injected = member.Admit(Fn::kC_Finalize)) return *injected;
  return member.Finalize(reserved);
}

CK_RV C_GetFunctionListImpl(CK_FUNCTION_LIST_PTR_PTR list);

P11HA_TM_FORWARD(C_GetInfo, (CK_INFO_PTR info), (info))
P11HA_TM_FORWARD(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count),
                 (present, list, count))
P11HA_TM_FORWARD(C_GetSlotInfo, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))
P11HA_TM_FORWARD(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))

CK_RV C_GetMechanismListImpl(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  const Member& member = Member::Instance();
  return Forward(Fn::kC_GetMechanismList, [&](CK_FUNCTION_LIST* f) -> CK_RV {
    const auto& allowed = member.mechanisms();
    if (!allowed) return f->C_GetMechanismList(slot, list, count);
    if (count == nullptr) return CKR_ARGUMENTS_BAD;
    CK_ULONG all_count = 0;
    if (const CK_RV rv = f->C_GetMechanismList(slot, nullptr, &all_count); rv != CKR_OK) return rv;
    std::vector<CK_MECHANISM_TYPE> all(all_count);
    if (const CK_RV rv = f->C_GetMechanismList(slot, all.data(), &all_count); rv != CKR_OK) {
      return rv;
    }
    all.resize(all_count);
    std::erase_if(all, [&](CK_MECHANISM_TYPE type) {
      return std::find(allowed->begin(), allowed->end(), type) == allowed->end();
    });
    const CK_ULONG capacity = *count;
    *count = all.size();
    if (list == nullptr) return CKR_OK;
    if (capacity < all.size()) return CKR_BUFFER_TOO_SMALL;
    std::copy(all.begin(), all.end(), list);
    return CKR_OK;
  });
}

CK_RV C_GetMechanismInfoImpl(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  const Member& member = Member::Instance();
  return Forward(Fn::kC_GetMechanismInfo, [&](CK_FUNCTION_LIST* f) -> CK_RV {
    const auto& allowed = member.mechanisms();
    if (allowed && std::find(allowed->begin(), allowed->end(), type) == allowed->end()) {
      return CKR_MECHANISM_INVALID;
    }
    return f->C_GetMechanismInfo(slot, type, info);
  });
}

P11HA_TM_FORWARD(C_InitToken,
                 (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label),
                 (slot, pin, pin_len, label))
P11HA_TM_FORWARD(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len),
                 (s, pin, pin_len))
P11HA_TM_FORWARD(C_SetPIN,
                 (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len,
                  CK_UTF8CHAR_PTR new_pin, CK_ULONG new_len),
                 (s, old_pin, old_len, new_pin, new_len))
P11HA_TM_FORWARD(C_OpenSession,
                 (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                  CK_SESSION_HANDLE_PTR s),
                 (slot, flags, app, notify, s))
P11HA_TM_FORWARD(C_CloseSession, (CK_SESSION_HANDLE s), (s))
P11HA_TM_FORWARD(C_CloseAllSessions, (CK_SLOT_ID slot), (slot))
P11HA_TM_FORWARD(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info), (s, info))
P11HA_TM_FORWARD(C_GetOperationState,
                 (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG_PTR state_len),
                 (s, state, state_len))
P11HA_TM_FORWARD(C_SetOperationState,
                 (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG state_len,
                  CK_OBJECT_HANDLE enc_key, CK_OBJECT_HANDLE auth_key),
                 (s, state, state_len, enc_key, auth_key))
P11HA_TM_FORWARD(C_Login,
                 (CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len),
                 (s, user, pin, pin_len))
P11HA_TM_FORWARD(C_Logout, (CK_SESSION_HANDLE s), (s))
P11HA_TM_FORWARD(C_CreateObject,
                 (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
                 (s, t, n, o))
P11HA_TM_FORWARD(C_CopyObject,
                 (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                  CK_OBJECT_HANDLE_PTR out),
                 (s, o, t, n, out))
P11HA_TM_FORWARD(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))
P11HA_TM_FORWARD(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR size),
                 (s, o, size))
P11HA_TM_FORWARD(C_GetAttributeValue,
                 (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),
                 (s, o, t, n))
P11HA_TM_FORWARD(C_SetAttributeValue,
                 (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),
                 (s, o, t, n))
P11HA_TM_FORWARD(C_FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n),
                 (s, t, n))
P11HA_TM_FORWARD(C_FindObjects,
                 (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n),
                 (s, o, max, n))
P11HA_TM_FORWARD(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))

// Init, single-part, update and final calls of the cipher families share their shapes.
#define P11HA_TM_INIT(name) \
  P11HA_TM_FORWARD(name, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
#define P11HA_TM_ONESHOT(name, operation)                                                    \
  P11HA_TM_OPERATION(name, operation,                                                        \
                     (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, \
                      CK_ULONG_PTR out_len),                                                 \
                     (s, in, in_len, out, out_len))
#define P11HA_TM_UPDATE(name, operation)                                                      \
  P11HA_TM_OPERATION(name, operation, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), \
                     (s, in, in_len))
#define P11HA_TM_FINAL(name, operation)                                            \
  P11HA_TM_OPERATION(name, operation,                                              \
                     (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len), \
                     (s, out, out_len))

P11HA_TM_INIT(C_EncryptInit)
P11HA_TM_ONESHOT(C_Encrypt, kEncrypt)
P11HA_TM_ONESHOT(C_EncryptUpdate, kEncrypt)
P11HA_TM_FINAL(C_EncryptFinal, kEncrypt)
P11HA_TM_INIT(C_DecryptInit)
P11HA_TM_ONESHOT(C_Decrypt, kDecrypt)
P11HA_TM_ONESHOT(C_DecryptUpdate, kDecrypt)
P11HA_TM_FINAL(C_DecryptFinal, kDecrypt)
P11HA_TM_FORWARD(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))
P11HA_TM_ONESHOT(C_Digest, kDigest)
P11HA_TM_UPDATE(C_DigestUpdate, kDigest)
P11HA_TM_OPERATION(C_DigestKey, kDigest, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))
P11HA_TM_FINAL(C_DigestFinal, kDigest)
P11HA_TM_INIT(C_SignInit)
P11HA_TM_ONESHOT(C_Sign, kSign)
P11HA_TM_UPDATE(C_SignUpdate, kSign)
P11HA_TM_FINAL(C_SignFinal, kSign)
P11HA_TM_INIT(C_SignRecoverInit)
P11HA_TM_ONESHOT(C_SignRecover, kSign)
P11HA_TM_INIT(C_VerifyInit)
P11HA_TM_OPERATION(C_Verify, kVerify,
                   (CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR sig,
                    CK_ULONG sig_len),
                   (s, data, data_len, sig, sig_len))
P11HA_TM_UPDATE(C_VerifyUpdate, kVerify)
P11HA_TM_OPERATION(C_VerifyFinal, kVerify, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len),
                   (s, sig, sig_len))
P11HA_TM_INIT(C_VerifyRecoverInit)
P11HA_TM_ONESHOT(C_VerifyRecover, kVerify)
// SoftHSM has no dual-function operations, so there is nothing to end for these.
#define P11HA_TM_DUAL(name)                                                                \
  P11HA_TM_FORWARD(name,                                                                   \
                   (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, \
                    CK_ULONG_PTR out_len),                                                 \
                   (s, in, in_len, out, out_len))
P11HA_TM_DUAL(C_DigestEncryptUpdate)
P11HA_TM_DUAL(C_DecryptDigestUpdate)
P11HA_TM_DUAL(C_SignEncryptUpdate)
P11HA_TM_DUAL(C_DecryptVerifyUpdate)
P11HA_TM_FORWARD(C_GenerateKey,
                 (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                  CK_OBJECT_HANDLE_PTR k),
                 (s, m, t, n, k))
P11HA_TM_FORWARD(C_GenerateKeyPair,
                 (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub_t, CK_ULONG pub_n,
                  CK_ATTRIBUTE_PTR priv_t, CK_ULONG priv_n, CK_OBJECT_HANDLE_PTR pub,
                  CK_OBJECT_HANDLE_PTR priv),
                 (s, m, pub_t, pub_n, priv_t, priv_n, pub, priv))
P11HA_TM_FORWARD(C_WrapKey,
                 (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping,
                  CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
                 (s, m, wrapping, key, out, out_len))
P11HA_TM_FORWARD(C_UnwrapKey,
                 (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE unwrapping,
                  CK_BYTE_PTR in, CK_ULONG in_len, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                  CK_OBJECT_HANDLE_PTR k),
                 (s, m, unwrapping, in, in_len, t, n, k))
P11HA_TM_FORWARD(C_DeriveKey,
                 (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base,
                  CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
                 (s, m, base, t, n, k))
P11HA_TM_FORWARD(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR seed, CK_ULONG seed_len),
                 (s, seed, seed_len))
P11HA_TM_FORWARD(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG out_len),
                 (s, out, out_len))
P11HA_TM_FORWARD(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))
P11HA_TM_FORWARD(C_CancelFunction, (CK_SESSION_HANDLE s), (s))
P11HA_TM_FORWARD(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved),
                 (flags, slot, reserved))

#undef P11HA_TM_INIT
#undef P11HA_TM_ONESHOT
#undef P11HA_TM_UPDATE
#undef P11HA_TM_FINAL
#undef P11HA_TM_DUAL
#undef P11HA_TM_OPERATION
#undef P11HA_TM_FORWARD

CK_FUNCTION_LIST function_list = {{2, 40},
#define P11HA_TM_ENTRY(name) name##Impl,
                                  P11HA_TM_FUNCTIONS(P11HA_TM_ENTRY)
#undef P11HA_TM_ENTRY
};

CK_RV C_GetFunctionListImpl(CK_FUNCTION_LIST_PTR_PTR list) {
  Member& member = Member::Instance();
  if (const auto injected = member.Admit(Fn::kC_GetFunctionList)) return *injected;
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  *list = &function_list;
  return CKR_OK;
}

}  // namespace
}  // namespace p11ha::test_member

extern "C" {

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  return p11ha::test_member::C_GetFunctionListImpl(list);
}

__attribute__((visibility("default"))) int p11ha_test_member_count(const char* function) {
  if (function == nullptr) return -1;
  return p11ha::test_member::Member::Instance().Count(function);
}

__attribute__((visibility("default"))) void p11ha_test_member_reset_counts(void) {
  p11ha::test_member::Member::Instance().ResetCounts();
}

__attribute__((visibility("default"))) void p11ha_test_member_set_fault(const char* spec) {
  p11ha::test_member::Member::Instance().SetFault(spec == nullptr ? "" : spec);
}

__attribute__((visibility("default"))) void p11ha_test_member_dump_counts(void) {
  p11ha::test_member::Member::Instance().DumpCounts();
}

}  // extern "C"
