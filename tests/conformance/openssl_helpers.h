// SPDX-License-Identifier: Apache-2.0
// An independent second opinion on the token's output: OpenSSL 3 rebuilds public keys from
// their PKCS#11 attributes and checks signatures, digests and ciphertexts.
#pragma once

#include <openssl/evp.h>

#include <memory>

#include "fixture.h"

namespace p11ha::conformance {

struct EvpPkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyDeleter>;

// From CKA_MODULUS and CKA_PUBLIC_EXPONENT (big-endian).
EvpPkeyPtr RsaPublicKey(const Bytes& modulus, const Bytes& exponent);
// From CKA_EC_PARAMS (a named-curve OID) and CKA_EC_POINT (a DER OCTET STRING).
EvpPkeyPtr EcPublicKey(const Bytes& ec_params, const Bytes& ec_point);

enum class Scheme { kRsaPkcs1, kRsaPss, kEcdsa };

// Verifies a PKCS#11 signature over a SHA-256 digest. PSS uses MGF1-SHA-256 and a 32-byte
// salt; ECDSA signatures are PKCS#11's raw r||s.
bool OpenSslVerify(EVP_PKEY* key, Scheme scheme, const Bytes& digest, const Bytes& signature);

Bytes Sha256(const Bytes& data);
Bytes AesGcmEncrypt(const Bytes& key, const Bytes& iv, const Bytes& aad, const Bytes& plain);
Bytes AesCbcPadEncrypt(const Bytes& key, const Bytes& iv, const Bytes& plain);
// RFC 3394 (`pad` false) or RFC 5649 (`pad` true) with the default IVs.
Bytes AesKeyWrap(const Bytes& kek, const Bytes& key, bool pad);

}  // namespace p11ha::conformance
