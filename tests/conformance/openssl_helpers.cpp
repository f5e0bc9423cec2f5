// SPDX-License-Identifier: Apache-2.0
#include "openssl_helpers.h"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <stdexcept>
#include <string>

namespace p11ha::conformance {
namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* pointer) const { Free(pointer); }
};
template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;

using ParamBuilder = Owned<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using Params = Owned<OSSL_PARAM, OSSL_PARAM_free>;
using PkeyContext = Owned<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using CipherContext = Owned<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using Bignum = Owned<BIGNUM, BN_free>;
using AsnObject = Owned<ASN1_OBJECT, ASN1_OBJECT_free>;
using AsnOctets = Owned<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using EcdsaSignature = Owned<ECDSA_SIG, ECDSA_SIG_free>;

void Check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what + " failed");
}

Bignum ToBignum(const CK_BYTE* bytes, size_t length) {
  Bignum number(BN_bin2bn(bytes, static_cast<int>(length), nullptr));
  Check(number != nullptr, "BN_bin2bn");
  return number;
}

EvpPkeyPtr FromData(const char* algorithm, OSSL_PARAM_BLD* builder) {
  Params params(OSSL_PARAM_BLD_to_param(builder));
  Check(params != nullptr, "OSSL_PARAM_BLD_to_param");
  PkeyContext context(EVP_PKEY_CTX_new_from_name(nullptr, algorithm, nullptr));
  Check(context != nullptr && EVP_PKEY_fromdata_init(context.get()) == 1, "fromdata_init");
  EVP_PKEY* key = nullptr;
  Check(EVP_PKEY_fromdata(context.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) == 1,
        "EVP_PKEY_fromdata");
  return EvpPkeyPtr(key);
}

// PKCS#11 ECDSA signatures are r||s of equal halves; OpenSSL wants a DER ECDSA-Sig-Value.
Bytes RawToDer(const Bytes& raw) {
  const size_t half = raw.size() / 2;
  EcdsaSignature signature(ECDSA_SIG_new());
  Check(signature != nullptr, "ECDSA_SIG_new");
  Bignum r = ToBignum(raw.data(), half);
  Bignum s = ToBignum(raw.data() + half, half);
  Check(ECDSA_SIG_set0(signature.get(), r.get(), s.get()) == 1, "ECDSA_SIG_set0");
  r.release();  // now owned by `signature`
  s.release();
  const int length = i2d_ECDSA_SIG(signature.get(), nullptr);
  Check(length > 0, "i2d_ECDSA_SIG");
  Bytes der(static_cast<size_t>(length));
  CK_BYTE* out = der.data();
  i2d_ECDSA_SIG(signature.get(), &out);
  return der;
}

Bytes Cipher(const EVP_CIPHER* cipher, const Bytes& key, const Bytes& iv, const Bytes& plain) {
  CipherContext context(EVP_CIPHER_CTX_new());
  Check(context != nullptr, "EVP_CIPHER_CTX_new");
  // Key-wrap modes refuse to run without this flag (they are not general ciphers).
  EVP_CIPHER_CTX_set_flags(context.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  Check(EVP_EncryptInit_ex(context.get(), cipher, nullptr, key.data(),
                           iv.empty() ? nullptr : iv.data()) == 1,
        "EVP_EncryptInit_ex");
  Bytes out(plain.size() + 2 * EVP_MAX_BLOCK_LENGTH);
  int length = 0;
  Check(EVP_EncryptUpdate(context.get(), out.data(), &length, plain.data(),
                          static_cast<int>(plain.size())) == 1,
        "EVP_EncryptUpdate");
  int final_length = 0;
  Check(EVP_EncryptFinal_ex(context.get(), out.data() + length, &final_length) == 1,
        "EVP_EncryptFinal_ex");
  out.resize(static_cast<size_t>(length + final_length));
  return out;
}

}  // namespace

EvpPkeyPtr RsaPublicKey(const Bytes& modulus, const Bytes& exponent) {
  ParamBuilder builder(OSSL_PARAM_BLD_new());
  Check(builder != nullptr, "OSSL_PARAM_BLD_new");
  Bignum n = ToBignum(modulus.data(), modulus.size());
  Bignum e = ToBignum(exponent.data(), exponent.size());
  Check(OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) == 1 &&
            OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) == 1,
        "push RSA params");
  return FromData("RSA", builder.get());
}

EvpPkeyPtr EcPublicKey(const Bytes& ec_params, const Bytes& ec_point) {
  const CK_BYTE* cursor = ec_params.data();
  AsnObject curve(d2i_ASN1_OBJECT(nullptr, &cursor, static_cast<long>(ec_params.size())));
  Check(curve != nullptr, "d2i_ASN1_OBJECT (CKA_EC_PARAMS)");
  const char* group = OBJ_nid2sn(OBJ_obj2nid(curve.get()));
  Check(group != nullptr, "OBJ_nid2sn");
  cursor = ec_point.data();
  AsnOctets point(d2i_ASN1_OCTET_STRING(nullptr, &cursor, static_cast<long>(ec_point.size())));
  Check(point != nullptr, "d2i_ASN1_OCTET_STRING (CKA_EC_POINT)");
  ParamBuilder builder(OSSL_PARAM_BLD_new());
  Check(builder != nullptr, "OSSL_PARAM_BLD_new");
  Check(OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ==
                1 &&
            OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                             ASN1_STRING_get0_data(point.get()),
                                             static_cast<size_t>(ASN1_STRING_length(
                                                 point.get()))) == 1,
        "push EC params");
  return FromData("EC", builder.get());
}

bool OpenSslVerify(EVP_PKEY* key, Scheme scheme, const Bytes& digest, const Bytes& signature) {
  PkeyContext context(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  Check(context != nullptr && EVP_PKEY_verify_init(context.get()) == 1, "EVP_PKEY_verify_init");
  Check(EVP_PKEY_CTX_set_signature_md(context.get(), EVP_sha256()) == 1, "set_signature_md");
  if (scheme == Scheme::kRsaPss) {
    Check(EVP_PKEY_CTX_set_rsa_padding(context.get(), RSA_PKCS1_PSS_PADDING) == 1 &&
              EVP_PKEY_CTX_set_rsa_mgf1_md(context.get(), EVP_sha256()) == 1 &&
              EVP_PKEY_CTX_set_rsa_pss_saltlen(context.get(), 32) == 1,
          "PSS parameters");
  } else if (scheme == Scheme::kRsaPkcs1) {
    Check(EVP_PKEY_CTX_set_rsa_padding(context.get(), RSA_PKCS1_PADDING) == 1, "PKCS#1 padding");
  }
  const Bytes encoded = scheme == Scheme::kEcdsa ? RawToDer(signature) : signature;
  return EVP_PKEY_verify(context.get(), encoded.data(), encoded.size(), digest.data(),
                         digest.size()) == 1;
}

Bytes Sha256(const Bytes& data) {
  Bytes digest(32);
  unsigned int length = 0;
  Check(EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(), nullptr) == 1,
        "EVP_Digest");
  digest.resize(length);
  return digest;
}

Bytes AesGcmEncrypt(const Bytes& key, const Bytes& iv, const Bytes& aad, const Bytes& plain) {
  CipherContext context(EVP_CIPHER_CTX_new());
  Check(context != nullptr, "EVP_CIPHER_CTX_new");
  Check(EVP_EncryptInit_ex(context.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_GCM_SET_IVLEN,
                                static_cast<int>(iv.size()), nullptr) == 1 &&
            EVP_EncryptInit_ex(context.get(), nullptr, nullptr, key.data(), iv.data()) == 1,
        "GCM init");
  int length = 0;
  Check(EVP_EncryptUpdate(context.get(), nullptr, &length, aad.data(),
                          static_cast<int>(aad.size())) == 1,
        "GCM AAD");
  Bytes out(plain.size() + 16);
  Check(EVP_EncryptUpdate(context.get(), out.data(), &length, plain.data(),
                          static_cast<int>(plain.size())) == 1,
        "GCM update");
  int final_length = 0;
  Check(EVP_EncryptFinal_ex(context.get(), out.data() + length, &final_length) == 1,
        "GCM final");
  const size_t cipher_length = static_cast<size_t>(length + final_length);
  // PKCS#11 returns the tag appended to the ciphertext.
  Check(EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_GCM_GET_TAG, 16,
                            out.data() + cipher_length) == 1,
        "GCM tag");
  out.resize(cipher_length + 16);
  return out;
}

Bytes AesCbcPadEncrypt(const Bytes& key, const Bytes& iv, const Bytes& plain) {
  return Cipher(EVP_aes_256_cbc(), key, iv, plain);
}

Bytes AesKeyWrap(const Bytes& kek, const Bytes& key, bool pad) {
  return Cipher(pad ? EVP_aes_256_wrap_pad() : EVP_aes_256_wrap(), kek, Bytes(), key);
}

}  // namespace p11ha::conformance
