// SPDX-License-Identifier: Apache-2.0
// Key management and random numbers (PKCS#11 2.40 §5.14-5.15).
#include "provider/abi/entry_points.h"
#include "provider/abi/guard.h"

namespace p11ha::abi {

// §5.14 C_GenerateKey
CK_RV C_GenerateKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                    CK_OBJECT_HANDLE_PTR phKey) {
  return WithModule("C_GenerateKey", [&](Module& m) { return m.GenerateKey(h, pMechanism, pTemplate, ulCount, phKey); });
}

// §5.14 C_GenerateKeyPair
CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                        CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                        CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey,
                        CK_OBJECT_HANDLE_PTR phPrivateKey) {
  return WithModule("C_GenerateKeyPair", [&](Module& m) {
    return m.GenerateKeyPair(h, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate,
                             ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey);
  });
}

// §5.14 C_WrapKey
CK_RV C_WrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
                CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen) {
  return WithModule("C_WrapKey", [&](Module& m) {
    return m.WrapKey(h, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen);
  });
}

// §5.14 C_UnwrapKey
CK_RV C_UnwrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                  CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount,
                  CK_OBJECT_HANDLE_PTR phKey) {
  return WithModule("C_UnwrapKey", [&](Module& m) {
    return m.UnwrapKey(h, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate, ulAttributeCount, phKey);
  });
}

// §5.14 C_DeriveKey
CK_RV C_DeriveKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
                  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey) {
  return WithModule("C_DeriveKey",
                    [&](Module& m) { return m.DeriveKey(h, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey); });
}

// §5.15 C_SeedRandom
CK_RV C_SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen) {
  return WithModule("C_SeedRandom", [&](Module& m) { return m.SeedRandom(h, pSeed, ulSeedLen); });
}

// §5.15 C_GenerateRandom
CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen) {
  return WithModule("C_GenerateRandom", [&](Module& m) { return m.GenerateRandom(h, RandomData, ulRandomLen); });
}

}  // namespace p11ha::abi
