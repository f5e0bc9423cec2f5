// SPDX-License-Identifier: Apache-2.0
// Encryption, decryption, digests, signatures (PKCS#11 2.40 §5.8-5.13). Each call after Init
// goes to the member session that holds the operation.
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {
namespace {

using F = CK_FUNCTION_LIST;
constexpr auto kParallel = CallKind::kParallel;

// One step of an operation: `finishing` steps end it unless they only asked for the length.
// `fed` is the input the step hands the operation, kept so that the operation can be replayed.
template <typename Field, typename... Args>
CK_RV Step(const char* name, CK_SESSION_HANDLE session, OpKind kind, bool finishing, const void* output,
           std::span<const CK_BYTE> fed, Field field, Args... args) {
  return WithModule(name, [&](Module& m) {
    return m.OpStep(session, kind, finishing, output, fed,
                    [&](Member& member, CK_SESSION_HANDLE member_session, const Member::PendingInit* start) {
                      return start != nullptr ? member.CallAfterInit(name, *start, field, member_session, args...)
                                              : member.Call(name, kParallel, field, member_session, args...);
                    });
  });
}

std::span<const CK_BYTE> Fed(CK_BYTE_PTR part, CK_ULONG length) {
  return part == nullptr ? std::span<const CK_BYTE>() : std::span<const CK_BYTE>(part, length);
}

// An Update with an output buffer consumes its part; one without only asks for the length.
std::span<const CK_BYTE> FedWithOutput(CK_BYTE_PTR part, CK_ULONG length, CK_BYTE_PTR output) {
  return output == nullptr ? std::span<const CK_BYTE>() : Fed(part, length);
}

CK_RV Init(const char* name, CK_SESSION_HANDLE session, OpKind kind, CK_MECHANISM_PTR mechanism,
           CK_OBJECT_HANDLE key) {
  return WithModule(name, [&](Module& m) { return m.OpInit(session, kind, mechanism, key); });
}

// Verification has no output buffer; any non-null marker makes the step final.
const void* const kNoOutput = "";

}  // namespace

// §5.8 Encryption
CK_RV C_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_EncryptInit", h, OpKind::kEncrypt, pMechanism, hKey);
}
CK_RV C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
                CK_ULONG_PTR pulEncryptedDataLen) {
  return Step("C_Encrypt", h, OpKind::kEncrypt, true, pEncryptedData, {}, &F::C_Encrypt, pData, ulDataLen, pEncryptedData,
              pulEncryptedDataLen);
}
CK_RV C_EncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                      CK_ULONG_PTR pulEncryptedPartLen) {
  return Step("C_EncryptUpdate", h, OpKind::kEncrypt, false, pEncryptedPart, FedWithOutput(pPart, ulPartLen, pEncryptedPart), &F::C_EncryptUpdate, pPart, ulPartLen,
              pEncryptedPart, pulEncryptedPartLen);
}
CK_RV C_EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen) {
  return Step("C_EncryptFinal", h, OpKind::kEncrypt, true, pLastEncryptedPart, {}, &F::C_EncryptFinal,
              pLastEncryptedPart, pulLastEncryptedPartLen);
}

// §5.9 Decryption
CK_RV C_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_DecryptInit", h, OpKind::kDecrypt, pMechanism, hKey);
}
CK_RV C_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData,
                CK_ULONG_PTR pulDataLen) {
  return Step("C_Decrypt", h, OpKind::kDecrypt, true, pData, {}, &F::C_Decrypt, pEncryptedData, ulEncryptedDataLen, pData,
              pulDataLen);
}
CK_RV C_DecryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                      CK_ULONG_PTR pulPartLen) {
  return Step("C_DecryptUpdate", h, OpKind::kDecrypt, false, pPart, FedWithOutput(pEncryptedPart, ulEncryptedPartLen, pPart), &F::C_DecryptUpdate, pEncryptedPart,
              ulEncryptedPartLen, pPart, pulPartLen);
}
CK_RV C_DecryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen) {
  return Step("C_DecryptFinal", h, OpKind::kDecrypt, true, pLastPart, {}, &F::C_DecryptFinal, pLastPart, pulLastPartLen);
}

// §5.10 Message digesting
CK_RV C_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism) {
  return Init("C_DigestInit", h, OpKind::kDigest, pMechanism, CK_INVALID_HANDLE);
}
CK_RV C_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
               CK_ULONG_PTR pulDigestLen) {
  return Step("C_Digest", h, OpKind::kDigest, true, pDigest, {}, &F::C_Digest, pData, ulDataLen, pDigest, pulDigestLen);
}
CK_RV C_DigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return Step("C_DigestUpdate", h, OpKind::kDigest, false, nullptr, Fed(pPart, ulPartLen), &F::C_DigestUpdate, pPart,
              ulPartLen);
}
CK_RV C_DigestKey(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE hKey) {
  return WithModule("C_DigestKey", [&](Module& m) { return m.DigestKey(h, hKey); });
}
CK_RV C_DigestFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen) {
  return Step("C_DigestFinal", h, OpKind::kDigest, true, pDigest, {}, &F::C_DigestFinal, pDigest, pulDigestLen);
}

// §5.11 Signing and MACing
CK_RV C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_SignInit", h, OpKind::kSign, pMechanism, hKey);
}
CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
             CK_ULONG_PTR pulSignatureLen) {
  return Step("C_Sign", h, OpKind::kSign, true, pSignature, {}, &F::C_Sign, pData, ulDataLen, pSignature, pulSignatureLen);
}
CK_RV C_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return Step("C_SignUpdate", h, OpKind::kSign, false, nullptr, Fed(pPart, ulPartLen), &F::C_SignUpdate, pPart, ulPartLen);
}
CK_RV C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  return Step("C_SignFinal", h, OpKind::kSign, true, pSignature, {}, &F::C_SignFinal, pSignature, pulSignatureLen);
}
CK_RV C_SignRecoverInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_SignRecoverInit", h, OpKind::kSignRecover, pMechanism, hKey);
}
CK_RV C_SignRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                    CK_ULONG_PTR pulSignatureLen) {
  return Step("C_SignRecover", h, OpKind::kSignRecover, true, pSignature, {}, &F::C_SignRecover, pData, ulDataLen,
              pSignature, pulSignatureLen);
}

// §5.12 Verifying signatures and MACs
CK_RV C_VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_VerifyInit", h, OpKind::kVerify, pMechanism, hKey);
}
CK_RV C_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
               CK_ULONG ulSignatureLen) {
  return Step("C_Verify", h, OpKind::kVerify, true, kNoOutput, {}, &F::C_Verify, pData, ulDataLen, pSignature,
              ulSignatureLen);
}
CK_RV C_VerifyUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return Step("C_VerifyUpdate", h, OpKind::kVerify, false, nullptr, Fed(pPart, ulPartLen), &F::C_VerifyUpdate, pPart, ulPartLen);
}
CK_RV C_VerifyFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen) {
  return Step("C_VerifyFinal", h, OpKind::kVerify, true, kNoOutput, {}, &F::C_VerifyFinal, pSignature, ulSignatureLen);
}
CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return Init("C_VerifyRecoverInit", h, OpKind::kVerifyRecover, pMechanism, hKey);
}
CK_RV C_VerifyRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
                      CK_ULONG_PTR pulDataLen) {
  return Step("C_VerifyRecover", h, OpKind::kVerifyRecover, true, pData, {}, &F::C_VerifyRecover, pSignature,
              ulSignatureLen, pData, pulDataLen);
}

// §5.13 Dual-function operations need two operations active on one member session at once;
// p11ha keeps one operation per session (as SoftHSM does), so these are not offered.
CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) {
  return WithModule("C_DigestEncryptUpdate", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}
CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) {
  return WithModule("C_DecryptDigestUpdate", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}
CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) {
  return WithModule("C_SignEncryptUpdate", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}
CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) {
  return WithModule("C_DecryptVerifyUpdate", [&](Module&) { return CKR_FUNCTION_NOT_SUPPORTED; });
}

}  // namespace p11ha::abi
