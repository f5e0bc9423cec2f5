// SPDX-License-Identifier: Apache-2.0
// Failover inside one process (DESIGN.md "Failure", "Routing", "Handles"; issue 4) over three
// staged test members (failover_support.h). A member that fails, stalls past call_timeout_ms or
// restarts at any step of an operation must not show: every call says CKR_OK and the result is
// checked outside p11ha (OpenSSL) or by value. The member counters prove each fault was hit, and
// served_log proves the failed member serves again afterwards, which after a restart needs its
// handles remapped (SoftHSM hands the same numbers to other objects). The priority policy makes
// member 1 serve while it is up, so a fault at the first step can be placed before anything
// tells which member serves.
#include <openssl/evp.h>

#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <sstream>

#include "failover_support.h"

namespace p11ha::module_test::failover {
namespace {

Bytes ReadValue(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object) {
  Bytes value(256);
  CK_ATTRIBUTE attribute{CKA_VALUE, value.data(), value.size()};
  if (f->C_GetAttributeValue(session, object, &attribute, 1) != CKR_OK) return {};
  value.resize(attribute.ulValueLen);
  return value;
}

// A token AES-256 key of known value, so OpenSSL can check the ciphertext.
CK_OBJECT_HANDLE CreateAesKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, Bytes value) {
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL yes = CK_TRUE;
  std::string label = "failover-aes";
  CK_ATTRIBUTE key_template[] = {
      {CKA_CLASS, &key_class, sizeof key_class},
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_ENCRYPT, &yes, sizeof yes},
      {CKA_DECRYPT, &yes, sizeof yes},
      {CKA_VALUE, value.data(), value.size()},
      {CKA_LABEL, label.data(), label.size()},
  };
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  const CK_RV rv = f->C_CreateObject(session, key_template, std::size(key_template), &key);
  INFO("C_CreateObject(AES key) -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  return key;
}

std::optional<Bytes> OpenSslDecrypt(const Bytes& key, const Bytes& iv, const Bytes& ciphertext) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  Bytes plain(ciphertext.size() + 16);
  int n = 0, last = 0;
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_cbc(), nullptr, key.data(), iv.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), plain.data(), &n, ciphertext.data(), static_cast<int>(ciphertext.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), plain.data() + n, &last) != 1)
    return std::nullopt;
  plain.resize(static_cast<std::size_t>(n + last));
  return plain;
}

enum class Step {
  kSignInit,
  kSignSizeQuery,
  kSignFinal,
  kDigestUpdate,
  kDigestFinal,
  kEncryptUpdate,
  kEncryptFinal,
  kFind
};

// Each runner drives one operation through p11ha, arms the fault right before its step, and
// returns "" when the result is right, else what was wrong with it.
using Runner = std::string (*)(const Cluster&, Kind, Step, Trace&, Armed*);

std::string RunSign(const Cluster& c, Kind kind, Step step, Trace& t, Armed* armed) {
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  const Digest digest = Sha256("failover sign");
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  const std::vector<int> before = c.Counts("C_SignInit");
  if (step == Step::kSignInit) c.Arm(kind, 0, "C_SignInit", 0, armed);
  if (t("C_SignInit", [&] { return f->C_SignInit(s, &ecdsa, c.key().private_key); }) != CKR_OK) return "";
  const int serving = step == Step::kSignInit ? 0 : c.MovedMember("C_SignInit", before);
  if (serving < 0) return "not one member took C_SignInit";
  Digest input = digest;
  Bytes signature(128);
  CK_ULONG length = 0;
  if (step == Step::kSignSizeQuery) c.Arm(kind, serving, "C_Sign", 0, armed);
  if (t("C_Sign(NULL)", [&] { return f->C_Sign(s, input.data(), input.size(), nullptr, &length); }) != CKR_OK)
    return "";
  if (length != 64) return "the size query said " + std::to_string(length) + ", not 64";
  if (step == Step::kSignFinal) c.Arm(kind, serving, "C_Sign", 0, armed);
  if (t("C_Sign", [&] { return f->C_Sign(s, input.data(), input.size(), signature.data(), &length); }) != CKR_OK)
    return "";
  signature.resize(length);
  return VerifyP256(c.point(), digest, signature) ? "" : "the signature does not verify under the public key";
}

std::string RunDigest(const Cluster& c, Kind kind, Step step, Trace& t, Armed* armed) {
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  CK_MECHANISM sha256{CKM_SHA256, nullptr, 0};
  const std::vector<int> before = c.Counts("C_DigestInit");
  if (t("C_DigestInit", [&] { return f->C_DigestInit(s, &sha256); }) != CKR_OK) return "";
  const int serving = c.MovedMember("C_DigestInit", before);
  if (serving < 0) return "not one member took C_DigestInit";
  std::string whole;
  for (int i = 0; i < 5; ++i) {
    std::string chunk(50, static_cast<char>('a' + i));
    whole += chunk;
    if (step == Step::kDigestUpdate && i == 2) c.Arm(kind, serving, "C_DigestUpdate", 0, armed);
    const CK_RV rv = t("C_DigestUpdate " + std::to_string(i + 1),
                       [&] { return f->C_DigestUpdate(s, reinterpret_cast<CK_BYTE_PTR>(chunk.data()), chunk.size()); });
    if (rv != CKR_OK) return "";
  }
  Digest out{};
  CK_ULONG length = out.size();
  if (step == Step::kDigestFinal) c.Arm(kind, serving, "C_DigestFinal", 0, armed);
  if (t("C_DigestFinal", [&] { return f->C_DigestFinal(s, out.data(), &length); }) != CKR_OK) return "";
  return length == 32 && out == Sha256(whole) ? "" : "the digest is not OpenSSL's SHA-256 of the 250 bytes";
}

std::string RunEncrypt(const Cluster& c, Kind kind, Step step, Trace& t, Armed* armed) {
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  const Bytes value(32, 0x5c);
  const CK_OBJECT_HANDLE key = CreateAesKey(f, s, value);
  Bytes iv(16, 0x24);
  CK_MECHANISM cbc_pad{CKM_AES_CBC_PAD, iv.data(), iv.size()};
  const std::vector<int> before = c.Counts("C_EncryptInit");
  if (t("C_EncryptInit", [&] { return f->C_EncryptInit(s, &cbc_pad, key); }) != CKR_OK) return "";
  const int serving = c.MovedMember("C_EncryptInit", before);
  if (serving < 0) return "not one member took C_EncryptInit";
  // Pieces that do not fill whole blocks, so the member holds input back between calls.
  Bytes plain, cipher;
  const int pieces[] = {37, 41, 22};
  for (int i = 0; i < 3; ++i) {
    Bytes piece(pieces[i]);
    for (std::size_t k = 0; k < piece.size(); ++k) piece[k] = static_cast<unsigned char>(plain.size() + k);
    plain.insert(plain.end(), piece.begin(), piece.end());
    Bytes out(64);
    CK_ULONG length = out.size();
    if (step == Step::kEncryptUpdate && i == 1) c.Arm(kind, serving, "C_EncryptUpdate", 0, armed);
    const CK_RV rv = t("C_EncryptUpdate " + std::to_string(i + 1),
                       [&] { return f->C_EncryptUpdate(s, piece.data(), piece.size(), out.data(), &length); });
    if (rv != CKR_OK) return "";
    cipher.insert(cipher.end(), out.begin(), out.begin() + static_cast<std::ptrdiff_t>(length));
  }
  Bytes out(32);
  CK_ULONG length = out.size();
  if (step == Step::kEncryptFinal) c.Arm(kind, serving, "C_EncryptFinal", 0, armed);
  if (t("C_EncryptFinal", [&] { return f->C_EncryptFinal(s, out.data(), &length); }) != CKR_OK) return "";
  cipher.insert(cipher.end(), out.begin(), out.begin() + static_cast<std::ptrdiff_t>(length));
  const auto decrypted = OpenSslDecrypt(value, iv, cipher);
  if (!decrypted) return std::to_string(cipher.size()) + " ciphertext bytes that OpenSSL cannot decrypt";
  return *decrypted == plain ? "" : "the ciphertext decrypts to something else than the 100 bytes given";
}

std::string RunFind(const Cluster& c, Kind kind, Step, Trace& t, Armed* armed) {
  CK_FUNCTION_LIST* f = c.f();
  const CK_SESSION_HANDLE s = c.session();
  std::map<CK_OBJECT_HANDLE, Bytes> expected;
  for (int i = 0; i < 6; ++i) {
    const CK_OBJECT_HANDLE object = CreateData(f, s, /*on_token=*/true, /*is_private=*/false, "failover-find");
    expected[object] = ReadValue(f, s, object);
  }
  std::string label = "failover-find";
  CK_ATTRIBUTE query[] = {{CKA_LABEL, label.data(), label.size()}};
  // Member 1 serves searches under the priority policy; `after 1` fails it once it has handed
  // over its first batch, whichever way p11ha spreads the search.
  c.Arm(kind, 0, "C_FindObjects", 1, armed);
  if (t("C_FindObjectsInit", [&] { return f->C_FindObjectsInit(s, query, 1); }) != CKR_OK) return "";
  std::vector<CK_OBJECT_HANDLE> found;
  for (int round = 1; round <= 10; ++round) {
    CK_OBJECT_HANDLE batch[2] = {};
    CK_ULONG n = 0;
    if (t("C_FindObjects " + std::to_string(round), [&] { return f->C_FindObjects(s, batch, 2, &n); }) != CKR_OK)
      return "";
    if (n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  if (t("C_FindObjectsFinal", [&] { return f->C_FindObjectsFinal(s); }) != CKR_OK) return "";
  std::ostringstream problems;
  std::set<CK_OBJECT_HANDLE> unique(found.begin(), found.end());
  if (unique.size() != found.size()) problems << "a handle came back twice; ";
  for (const auto& [object, value] : expected) {
    if (!unique.count(object)) problems << "object " << object << " missing; ";
  }
  for (CK_OBJECT_HANDLE object : unique) {
    const auto known = expected.find(object);
    if (known == expected.end()) {
      problems << "unexpected handle " << object << "; ";
    } else if (ReadValue(f, s, object) != known->second) {
      problems << "handle " << object << " now reads another object's value; ";
    }
  }
  return problems.str();
}

void RunFailover(Kind kind, Step step) {
  Cluster c;
  const Runner runner = step <= Step::kSignFinal      ? RunSign
                        : step <= Step::kDigestFinal  ? RunDigest
                        : step <= Step::kEncryptFinal ? RunEncrypt
                                                      : RunFind;
  Trace trace;
  Armed armed;
  std::string wrong;
  bool hung = false;
  {
    Watchdog watchdog(c.sos(), kHungAfter);
    wrong = runner(c, kind, step, trace, &armed);
    hung = watchdog.fired();
  }
  const int calls = c.CallsSince(armed);  // before recovery adds its own calls
  // One verdict, so that a failure prints the trace once.
  std::string problems;
  if (hung)
    problems +=
        "a call did not return until the test released the stall after " + std::to_string(kHungAfter.count()) + " ms; ";
  if (calls <= armed.after) problems += "the fault was never hit, so this proves nothing; ";
  if (!trace.AllOk()) problems += "the application saw an error; ";
  if (!wrong.empty()) problems += wrong + "; ";
  // One member call abandoned after call_timeout_ms at most, then a retry elsewhere.
  if (trace.SlowestMs() >= kCallTimeoutMs + 1000)
    problems += "a call took " + std::to_string(trace.SlowestMs()) + " ms; ";
  std::string after;
  if (problems.empty() && !c.SignsAgainOn(armed.member, armed.at_ms, &after)) {
    problems += "member " + std::to_string(armed.member + 1) + " did not sign with the same key handle again within " +
                std::to_string(kBackWithin.count()) + " ms; ";
  }
  INFO("fault '" << armed.spec << "' on member " << armed.member + 1 << ", which then counted " << calls << " calls of "
                 << armed.function << " during the operation");
  INFO("application calls:\n" << trace.Text());
  INFO("after the operation: " << (after.empty() ? "not tried\n" : after));
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(problems == "");
}

#define P11HA_FAILOVER_CASE(kind, step, text)                                                 \
  TEST_CASE("failover: " text " is not seen by the application", "[integration][failover]") { \
    RunFailover(Kind::kind, Step::step);                                                      \
  }

P11HA_FAILOVER_CASE(kFail, kSignInit, "CKR_DEVICE_ERROR at C_SignInit")
P11HA_FAILOVER_CASE(kFail, kSignSizeQuery, "CKR_DEVICE_ERROR at the size query C_Sign(NULL)")
P11HA_FAILOVER_CASE(kFail, kSignFinal, "CKR_DEVICE_ERROR at the final C_Sign")
P11HA_FAILOVER_CASE(kFail, kDigestUpdate, "CKR_DEVICE_ERROR at a C_DigestUpdate")
P11HA_FAILOVER_CASE(kFail, kDigestFinal, "CKR_DEVICE_ERROR at C_DigestFinal")
P11HA_FAILOVER_CASE(kFail, kEncryptUpdate, "CKR_DEVICE_ERROR at a C_EncryptUpdate")
P11HA_FAILOVER_CASE(kFail, kEncryptFinal, "CKR_DEVICE_ERROR at C_EncryptFinal")
P11HA_FAILOVER_CASE(kFail, kFind, "CKR_DEVICE_ERROR in the middle of a search")
P11HA_FAILOVER_CASE(kStall, kSignInit, "a stall at C_SignInit")
P11HA_FAILOVER_CASE(kStall, kSignSizeQuery, "a stall at the size query C_Sign(NULL)")
P11HA_FAILOVER_CASE(kStall, kSignFinal, "a stall at the final C_Sign")
P11HA_FAILOVER_CASE(kStall, kDigestUpdate, "a stall at a C_DigestUpdate")
P11HA_FAILOVER_CASE(kStall, kDigestFinal, "a stall at C_DigestFinal")
P11HA_FAILOVER_CASE(kStall, kEncryptUpdate, "a stall at a C_EncryptUpdate")
P11HA_FAILOVER_CASE(kStall, kEncryptFinal, "a stall at C_EncryptFinal")
P11HA_FAILOVER_CASE(kStall, kFind, "a stall in the middle of a search")
P11HA_FAILOVER_CASE(kRestart, kSignInit, "a member restart at C_SignInit")
P11HA_FAILOVER_CASE(kRestart, kSignSizeQuery, "a member restart at the size query C_Sign(NULL)")
P11HA_FAILOVER_CASE(kRestart, kSignFinal, "a member restart at the final C_Sign")
P11HA_FAILOVER_CASE(kRestart, kDigestUpdate, "a member restart at a C_DigestUpdate")
P11HA_FAILOVER_CASE(kRestart, kDigestFinal, "a member restart at C_DigestFinal")
P11HA_FAILOVER_CASE(kRestart, kEncryptUpdate, "a member restart at a C_EncryptUpdate")
P11HA_FAILOVER_CASE(kRestart, kEncryptFinal, "a member restart at C_EncryptFinal")
P11HA_FAILOVER_CASE(kRestart, kFind, "a member restart in the middle of a search")

}  // namespace
}  // namespace p11ha::module_test::failover
