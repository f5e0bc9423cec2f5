// SPDX-License-Identifier: Apache-2.0
#include "chaos_workers.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <memory>
#include <stdexcept>
#include <thread>

namespace chaos {

using namespace replication_probe;  // NOLINT: the probe's PKCS#11 helpers are this file's API

std::int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string LocalStamp() {
  const std::int64_t ms = NowMs();
  const time_t seconds = static_cast<time_t>(ms / 1000);
  tm local{};
  localtime_r(&seconds, &local);
  char text[40];
  const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &local);
  std::snprintf(text + n, sizeof text - n, ".%03d", static_cast<int>(ms % 1000));
  return text;
}

std::string RvText(CK_RV rv) {
  // Codes a failing member could make p11ha pass on that the probe's table does not name.
  switch (rv) {
    case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_SESSION_CLOSED: return "CKR_SESSION_CLOSED";
    case CKR_DEVICE_MEMORY: return "CKR_DEVICE_MEMORY";
    case CKR_DATA_LEN_RANGE: return "CKR_DATA_LEN_RANGE";
    case CKR_ENCRYPTED_DATA_INVALID: return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_USER_PIN_NOT_INITIALIZED: return "CKR_USER_PIN_NOT_INITIALIZED";
    case CKR_CANCEL: return "CKR_CANCEL";
    default: return RvName(rv);
  }
}

namespace {


// A failing call answers in microseconds; pausing keeps the loop from spinning on errors.
void Pause() { std::this_thread::sleep_for(std::chrono::milliseconds(10)); }
void Pace(const Shared& s) {
  if (s.pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.pause_ms));
}

unsigned char* Ptr(Bytes& b) { return b.data(); }

std::size_t RandomSize(std::size_t low, std::size_t high) {
  const Bytes r = RandomBytes(2);
  return low + (static_cast<std::size_t>(r[0]) << 8 | r[1]) % (high - low + 1);
}

// CKM_ECDSA on a random digest, checked with OpenSSL; false when a call failed or it did not verify.
bool SignEcdsa(Worker& w, CK_OBJECT_HANDLE key, const EcdsaVerifier& verifier, bool size_query, const std::string& what) {
  Bytes digest = RandomBytes(32), signature(64);
  CK_ULONG size = signature.size();
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  if (w.Call("C_SignInit", [&] { return p11->C_SignInit(w.session, &mechanism, key); }) != CKR_OK) return false;
  if (size_query) {
    CK_ULONG needed = 0;
    if (w.Call("C_Sign", [&] { return p11->C_Sign(w.session, Ptr(digest), digest.size(), nullptr, &needed); }) !=
        CKR_OK)
      return false;
    if (needed > signature.size()) signature.resize(size = needed);
  }
  if (w.Call("C_Sign", [&] { return p11->C_Sign(w.session, Ptr(digest), digest.size(), Ptr(signature), &size); }) !=
      CKR_OK)
    return false;
  signature.resize(size);
  if (verifier.Verify(digest, signature)) return true;
  w.wrong.push_back(LocalStamp() + " " + what + ": signature does not verify with OpenSSL");
  return false;
}

// The signer's step: CKM_ECDSA on a random digest (with a size query every other time), or
// CKM_SHA256_RSA_PKCS in three updates, which p11ha must replay on another member when this one
// fails mid-way. Every signature is checked with OpenSSL.
bool SignAndCheck(Worker& w, const Shared& s, const EcdsaVerifier& ec, bool multi_part, bool size_query) {
  Bytes signature(multi_part ? 512 : 64);
  CK_ULONG size = signature.size();
  if (multi_part) {
    Bytes data = RandomBytes(RandomSize(3, 1500));
    CK_MECHANISM mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
    if (w.Call("C_SignInit", [&] { return p11->C_SignInit(w.session, &mechanism, s.rsa_key); }) != CKR_OK) return false;
    const std::size_t third = data.size() / 3;
    for (std::size_t from = 0; from < data.size();) {
      const std::size_t n = std::min(third, data.size() - from);
      if (w.Call("C_SignUpdate", [&] { return p11->C_SignUpdate(w.session, data.data() + from, n); }) != CKR_OK)
        return false;
      from += n;
    }
    if (w.Call("C_SignFinal", [&] { return p11->C_SignFinal(w.session, Ptr(signature), &size); }) != CKR_OK)
      return false;
    signature.resize(size);
    if (VerifyRsaSha256(s.rsa_modulus, s.rsa_exponent, data, signature)) return true;
    w.wrong.push_back(LocalStamp() + " RSA signing key: signature does not verify with OpenSSL");
    return false;
  }
  return SignEcdsa(w, s.signer_key, ec, size_query, "EC signing key");
}

// Reads an attribute, recording the calls; empty on failure.
Bytes ReadAttribute(Worker& w, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE attribute{type, nullptr, 0};
  if (w.Call("C_GetAttributeValue", [&] { return p11->C_GetAttributeValue(w.session, object, &attribute, 1); }) !=
      CKR_OK)
    return {};
  Bytes value(attribute.ulValueLen);
  attribute.pValue = value.data();
  if (w.Call("C_GetAttributeValue", [&] { return p11->C_GetAttributeValue(w.session, object, &attribute, 1); }) !=
      CKR_OK)
    return {};
  value.resize(attribute.ulValueLen);
  return value;
}

// Private keys with `label` as the application finds them; -1 when a call failed.
long CountPrivate(Worker& w, const std::string& label) {
  std::string copy = label;
  CK_OBJECT_CLASS object_class = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE match[] = {{CKA_LABEL, copy.data(), copy.size()}, {CKA_CLASS, &object_class, sizeof object_class}};
  if (w.Call("C_FindObjectsInit", [&] { return p11->C_FindObjectsInit(w.session, match, 2); }) != CKR_OK) return -1;
  CK_OBJECT_HANDLE found[8];
  CK_ULONG n = 0;
  const CK_RV rv = w.Call("C_FindObjects", [&] { return p11->C_FindObjects(w.session, found, 8, &n); });
  const CK_RV final_rv = w.Call("C_FindObjectsFinal", [&] { return p11->C_FindObjectsFinal(w.session); });
  return rv == CKR_OK && final_rv == CKR_OK ? static_cast<long>(n) : -1;
}

}  // namespace

void SignLoop(Worker& w, const Shared& s) {
  // Built once per worker: every signature the load gets is checked.
  const EcdsaVerifier verifier("prime256v1", BarePoint(s.signer_point));
  for (std::uint64_t i = 0; !s.stop->load(); ++i) {
    const bool multi_part = i % 4 == 3;
    if (SignAndCheck(w, s, verifier, multi_part, i % 2 == 0)) {
      ++w.ops[multi_part ? "sign-rsa-multipart" : "sign"];
      Pace(s);
    } else {
      Pause();
    }
  }
}

// One key pair's life: made (replicated before the call returns), found, used, destroyed. One
// pair in `keep_every` stays, so the final `p11ha verify` has new keys to find on every member.
void KeygenLoop(Worker& w, const Shared& s) {
  const Bytes p256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  for (std::uint64_t n = 0; !s.stop->load(); ++n) {
    const std::string label = s.label_prefix + "-" + w.name + "-" + std::to_string(n);
    const Bytes id = Sha256(label);
    Template pub, priv;
    pub.Bool(CKA_TOKEN, true).Bool(CKA_VERIFY, true).Add(CKA_EC_PARAMS, p256).Add(CKA_LABEL, label).Add(CKA_ID, id);
    priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_SIGN, true);
    priv.Add(CKA_LABEL, label).Add(CKA_ID, id);
    CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_OBJECT_HANDLE pub_key = 0, priv_key = 0;
    if (w.Call("C_GenerateKeyPair", [&] {
          return p11->C_GenerateKeyPair(w.session, &mechanism, pub.data(), pub.size(), priv.data(), priv.size(),
                                        &pub_key, &priv_key);
        }) != CKR_OK) {
      Pause();
      continue;
    }
    ++w.keys_created;
    ++w.ops["keygen"];
    const long found = CountPrivate(w, label);
    if (found >= 0) ++w.ops["find"];
    if (found >= 0 && found != 1)
      w.wrong.push_back(LocalStamp() + " find: " + std::to_string(found) + " private keys labelled " + label);
    const Bytes point = ReadAttribute(w, pub_key, CKA_EC_POINT);
    if (!point.empty() && SignEcdsa(w, priv_key, EcdsaVerifier("prime256v1", BarePoint(point)), false, "new key " + label))
      ++w.ops["sign-new-key"];
    if (n % static_cast<std::uint64_t>(s.keep_every) == static_cast<std::uint64_t>(s.keep_every) - 1) {
      w.alive.insert({{label, CKO_PRIVATE_KEY}, {label, CKO_PUBLIC_KEY}});
      continue;
    }
    const CK_RV priv_rv = w.Call("C_DestroyObject", [&] { return p11->C_DestroyObject(w.session, priv_key); });
    const CK_RV pub_rv = w.Call("C_DestroyObject", [&] { return p11->C_DestroyObject(w.session, pub_key); });
    if (priv_rv != CKR_OK) w.alive.insert({label, CKO_PRIVATE_KEY});
    if (pub_rv != CKR_OK) w.alive.insert({label, CKO_PUBLIC_KEY});
    if (priv_rv == CKR_OK && pub_rv == CKR_OK) {
      ++w.keys_destroyed;
      ++w.ops["destroy"];
    }
    Pace(s);
  }
}

// AES-256-GCM with a long-lived key: encrypt (single or multi-part) then decrypt, which the
// balancing may send to another member's copy of the key; the plaintext must come back.
void AesLoop(Worker& w, const Shared& s) {
  for (std::uint64_t i = 0; !s.stop->load(); ++i) {
    Bytes iv = RandomBytes(12), aad = RandomBytes(16);
    Bytes plain = RandomBytes(RandomSize(1, 2000));
    CK_GCM_PARAMS params{};
    params.pIv = iv.data();
    params.ulIvLen = iv.size();
    params.ulIvBits = iv.size() * 8;
    params.pAAD = aad.data();
    params.ulAADLen = aad.size();
    params.ulTagBits = 128;
    CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
    Bytes cipher(plain.size() + 16);
    CK_ULONG size = 0;
    bool ok = w.Call("C_EncryptInit", [&] { return p11->C_EncryptInit(w.session, &mechanism, s.aes_key); }) == CKR_OK;
    if (ok && i % 2 == 0) {
      size = cipher.size();
      ok = w.Call("C_Encrypt", [&] {
             return p11->C_Encrypt(w.session, Ptr(plain), plain.size(), Ptr(cipher), &size);
           }) == CKR_OK;
    } else if (ok) {
      const std::size_t half = plain.size() / 2;
      const std::size_t parts[2][2] = {{0, half}, {half, plain.size() - half}};
      for (const auto& part : parts) {
        CK_ULONG n = cipher.size() - size;
        ok = ok && w.Call("C_EncryptUpdate", [&] {
                     return p11->C_EncryptUpdate(w.session, plain.data() + part[0], part[1], cipher.data() + size, &n);
                   }) == CKR_OK;
        if (ok) size += n;
      }
      CK_ULONG n = cipher.size() - size;
      ok = ok && w.Call("C_EncryptFinal",
                        [&] { return p11->C_EncryptFinal(w.session, cipher.data() + size, &n); }) == CKR_OK;
      if (ok) size += n;
    }
    if (!ok) {
      Pause();
      continue;
    }
    cipher.resize(size);
    Bytes back(cipher.size());
    CK_ULONG back_size = back.size();
    ok = w.Call("C_DecryptInit", [&] { return p11->C_DecryptInit(w.session, &mechanism, s.aes_key); }) == CKR_OK &&
         w.Call("C_Decrypt", [&] {
           return p11->C_Decrypt(w.session, Ptr(cipher), cipher.size(), Ptr(back), &back_size);
         }) == CKR_OK;
    if (!ok) {
      Pause();
      continue;
    }
    back.resize(back_size);
    if (back != plain) {
      w.wrong.push_back(LocalStamp() + " AES-GCM: decryption gave other bytes than were encrypted");
      continue;
    }
    ++w.ops[i % 2 == 0 ? "aes-gcm" : "aes-gcm-multipart"];
    Pace(s);
  }
}

// SHA-256 in four updates, checked against OpenSSL: the cheapest multi-part operation.
void DigestLoop(Worker& w, const Shared& s) {
  while (!s.stop->load()) {
    Bytes data = RandomBytes(RandomSize(4, 4000));
    CK_MECHANISM mechanism{CKM_SHA256, nullptr, 0};
    bool ok = w.Call("C_DigestInit", [&] { return p11->C_DigestInit(w.session, &mechanism); }) == CKR_OK;
    const std::size_t quarter = data.size() / 4;
    for (std::size_t from = 0; ok && from < data.size();) {
      const std::size_t n = std::min(quarter, data.size() - from);
      ok = w.Call("C_DigestUpdate", [&] { return p11->C_DigestUpdate(w.session, data.data() + from, n); }) == CKR_OK;
      from += n;
    }
    Bytes digest(32);
    CK_ULONG size = digest.size();
    ok = ok && w.Call("C_DigestFinal", [&] { return p11->C_DigestFinal(w.session, Ptr(digest), &size); }) == CKR_OK;
    if (!ok) {
      Pause();
      continue;
    }
    digest.resize(size);
    if (digest != Sha256(data)) {
      w.wrong.push_back(LocalStamp() + " SHA-256: digest differs from OpenSSL's");
      continue;
    }
    ++w.ops["digest"];
    Pace(s);
  }
}

}  // namespace chaos
