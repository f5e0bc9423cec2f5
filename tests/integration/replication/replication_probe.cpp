// SPDX-License-Identifier: Apache-2.0
// replication-test.sh's hands and eyes. MODULE is libp11ha.so (P11HA_CONFIG in the environment,
// TOKEN its cluster label) to act through p11ha, or SoftHSM (SOFTHSM2_CONF in the environment,
// TOKEN a member's label) to look at one member token directly. SoftHSM sees only the tokens
// that existed at its C_Initialize, so every look at the members is a process of its own.
//
//   create MODULE TOKEN PIN PREFIX [--explicit-policy]
//       makes "the set" (kSet below) as token objects and checks it through the same module
//   check MODULE TOKEN PIN PREFIX
//       the set on one token: each object exactly once; private and secret keys
//       CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED and CKA_SENSITIVE TRUE; private keys sign and
//       OpenSSL verifies under the public key; known-value secrets hold the known value
//   aes-cross MODULE TOKEN_A PIN TOKEN_B LABEL...   encrypts on A, decrypts on B, and back
//   list MODULE TOKEN PIN                           "CLASS LABEL" per object, sorted
//   gen MODULE TOKEN PIN ec|rsa|aes|data LABEL      one token object; prints "rv CKR_..."
//   destroy MODULE TOKEN PIN LABEL                  every object labelled LABEL
//   churn MODULE TOKEN PIN N PREFIX                 N EC pairs made, every other one destroyed;
//                                                   "kept"/"deleted" LABEL, "started"/"finished" MS
//   hidden MODULE TOKEN PIN                         finds that must never show p11ha's own objects
//   key-check MODULE TOKEN PIN LABEL|id=ID PUBKEY_PEM
//                                                   the private key: policy, and it signs what
//                                                   OpenSSL verifies under PUBKEY_PEM
// `create` and `check` print "fp NAME HEX" per object of the set; the script compares them
// between p11ha and every member, so a member holding a different key of the same label fails.
// Exit: 0 ok, 1 a check failed, 2 usage, 3 the module refused the create or destroy (the
// "rv" line says with what).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "probe_support.h"

namespace replication_probe {
namespace {

enum class Kind { kRsa, kP256, kP384, kAes, kGeneric, kCert, kData, kKek, kUnwrapped, kDerived, kCopied };

// kek, unwrapped, derived and copied hold values the probe knows, so that C_CreateObject,
// C_UnwrapKey, C_DeriveKey and C_CopyObject are each checked against OpenSSL on every member.
struct Item {
  const char* name;
  Kind kind;
  unsigned char id;
};
constexpr Item kSet[] = {
    {"rsa", Kind::kRsa, 1},        {"p256", Kind::kP256, 2},          {"p384", Kind::kP384, 3},
    {"aes", Kind::kAes, 4},        {"generic", Kind::kGeneric, 5},    {"cert", Kind::kCert, 6},
    {"data", Kind::kData, 7},      {"kek", Kind::kKek, 8},            {"unwrapped", Kind::kUnwrapped, 9},
    {"derived", Kind::kDerived, 10}, {"copied", Kind::kCopied, 11},
};

const Bytes kP256Params = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const Bytes kP384Params = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
const Bytes kZeroBlock(16, 0);

bool IsPair(Kind kind) { return kind == Kind::kRsa || kind == Kind::kP256 || kind == Kind::kP384; }
bool IsSecret(Kind kind) {
  return kind == Kind::kAes || kind == Kind::kGeneric || kind == Kind::kKek || kind == Kind::kUnwrapped ||
         kind == Kind::kDerived || kind == Kind::kCopied;
}
bool IsAes(Kind kind) { return IsSecret(kind) && kind != Kind::kGeneric; }

std::string Label(const std::string& prefix, const Item& item) { return prefix + "-" + item.name; }
Bytes Known(const std::string& prefix, const std::string& name) { return Sha256(prefix + "/" + name); }
Bytes Id(const std::string& prefix, const Item& item) {
  const Bytes hash = Sha256(prefix);
  return {item.id, hash[0], hash[1], hash[2]};
}

// The AES-ECB(value, 0^16) the probe expects of a known-value secret; empty for the others.
Bytes ExpectedBlock(const std::string& prefix, Kind kind) {
  switch (kind) {
    case Kind::kKek: return AesEcb(Known(prefix, "kek"), kZeroBlock);
    case Kind::kUnwrapped: return AesEcb(Known(prefix, "unwrapped"), kZeroBlock);
    case Kind::kCopied: return AesEcb(Known(prefix, "copied"), kZeroBlock);
    case Kind::kDerived:  // CKM_AES_ECB_ENCRYPT_DATA: the value is AES-ECB(base, data)
      return AesEcb(AesEcb(Known(prefix, "kek"), Known(prefix, "derive-data")), kZeroBlock);
    default: return {};
  }
}

// Private and secret key templates: what an application asks for. With --explicit-policy the
// probe asks for p11ha's key-birth attributes itself (to try `check` on plain SoftHSM).
bool explicit_policy = false;
Template KeyTemplate(const std::string& label, const Bytes& id) {
  Template t;
  t.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Add(CKA_LABEL, label).Add(CKA_ID, id);
  if (explicit_policy) t.Bool(CKA_EXTRACTABLE, true).Bool(CKA_WRAP_WITH_TRUSTED, true);
  return t;
}

struct PairHandles {
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
};

PairHandles GeneratePair(CK_SESSION_HANDLE s, Kind kind, const std::string& label, const Bytes& id) {
  Template pub;
  pub.Bool(CKA_TOKEN, true).Bool(CKA_VERIFY, true).Add(CKA_LABEL, label).Add(CKA_ID, id);
  Template priv = KeyTemplate(label, id);
  priv.Bool(CKA_SIGN, true);
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  if (kind == Kind::kRsa) {
    mechanism.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    pub.Ulong(CKA_MODULUS_BITS, 2048).Add(CKA_PUBLIC_EXPONENT, Bytes{1, 0, 1});
  } else {
    pub.Add(CKA_EC_PARAMS, kind == Kind::kP384 ? kP384Params : kP256Params);
  }
  PairHandles h;
  Check(p11->C_GenerateKeyPair(s, &mechanism, pub.data(), pub.size(), priv.data(), priv.size(), &h.pub, &h.priv),
        "C_GenerateKeyPair " + label);
  return h;
}

Template SecretTemplate(const std::string& label, const Bytes& id, CK_KEY_TYPE type) {
  Template t = KeyTemplate(label, id);
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, type);
  return t;
}

void CreateItem(CK_SESSION_HANDLE s, const std::string& prefix, const Item& item) {
  const std::string label = Label(prefix, item);
  const Bytes id = Id(prefix, item);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  switch (item.kind) {
    case Kind::kRsa:
    case Kind::kP256:
    case Kind::kP384: GeneratePair(s, item.kind, label, id); return;
    case Kind::kAes: {
      Template t = KeyTemplate(label, id);
      t.Ulong(CKA_VALUE_LEN, 32).Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true);
      CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
      Check(p11->C_GenerateKey(s, &m, t.data(), t.size(), &h), "C_GenerateKey " + label);
      return;
    }
    case Kind::kGeneric: {
      Template t = KeyTemplate(label, id);
      t.Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET).Ulong(CKA_VALUE_LEN, 32).Bool(CKA_SIGN, true).Bool(CKA_VERIFY, true);
      CK_MECHANISM m{CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
      Check(p11->C_GenerateKey(s, &m, t.data(), t.size(), &h), "C_GenerateKey " + label);
      return;
    }
    case Kind::kCert: {
      Bytes subject;
      const Bytes der = SelfSignedCertificate(label, &subject);
      Template t;
      t.Ulong(CKA_CLASS, CKO_CERTIFICATE).Ulong(CKA_CERTIFICATE_TYPE, CKC_X_509).Bool(CKA_TOKEN, true)
          .Bool(CKA_PRIVATE, false).Add(CKA_VALUE, der).Add(CKA_SUBJECT, subject).Add(CKA_LABEL, label)
          .Add(CKA_ID, id);
      Check(p11->C_CreateObject(s, t.data(), t.size(), &h), "C_CreateObject " + label);
      return;
    }
    case Kind::kData: {
      Template t;
      t.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true)
          .Add(CKA_APPLICATION, std::string("replication-probe")).Add(CKA_LABEL, label)
          .Add(CKA_VALUE, Known(prefix, "data"));
      Check(p11->C_CreateObject(s, t.data(), t.size(), &h), "C_CreateObject " + label);
      return;
    }
    case Kind::kKek: {
      Template t = SecretTemplate(label, id, CKK_AES);
      t.Add(CKA_VALUE, Known(prefix, "kek")).Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true)
          .Bool(CKA_WRAP, true).Bool(CKA_UNWRAP, true).Bool(CKA_DERIVE, true);
      Check(p11->C_CreateObject(s, t.data(), t.size(), &h), "C_CreateObject " + label);
      return;
    }
    case Kind::kUnwrapped:
    case Kind::kDerived: {
      const std::vector<CK_OBJECT_HANDLE> kek = FindLabel(s, prefix + "-kek", CKO_SECRET_KEY);
      if (kek.size() != 1) throw std::runtime_error(prefix + "-kek found " + std::to_string(kek.size()) + " times");
      Template t = SecretTemplate(label, id, CKK_AES);
      t.Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true);
      if (item.kind == Kind::kUnwrapped) {
        Bytes blob = AesKeyWrap(Known(prefix, "kek"), Known(prefix, "unwrapped"));
        CK_MECHANISM m{CKM_AES_KEY_WRAP, nullptr, 0};
        Check(p11->C_UnwrapKey(s, &m, kek[0], blob.data(), blob.size(), t.data(), t.size(), &h),
              "C_UnwrapKey " + label);
      } else {
        Bytes data = Known(prefix, "derive-data");
        CK_KEY_DERIVATION_STRING_DATA params{data.data(), data.size()};
        CK_MECHANISM m{CKM_AES_ECB_ENCRYPT_DATA, &params, sizeof params};
        t.Ulong(CKA_VALUE_LEN, 32);
        Check(p11->C_DeriveKey(s, &m, kek[0], t.data(), t.size(), &h), "C_DeriveKey " + label);
      }
      return;
    }
    case Kind::kCopied: {
      // A session key made token object by C_CopyObject, as SunPKCS11's keystore does.
      Template t = SecretTemplate(label + "-session", id, CKK_AES);
      t.storage[0][0] = CK_FALSE;  // KeyTemplate's CKA_TOKEN
      t.Add(CKA_VALUE, Known(prefix, "copied")).Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true);
      CK_OBJECT_HANDLE session_key = CK_INVALID_HANDLE;
      Check(p11->C_CreateObject(s, t.data(), t.size(), &session_key), "C_CreateObject " + label + "-session");
      Template copy;
      copy.Bool(CKA_TOKEN, true).Add(CKA_LABEL, label).Add(CKA_ID, id);
      Check(p11->C_CopyObject(s, session_key, copy.data(), copy.size(), &h), "C_CopyObject " + label);
      Check(p11->C_DestroyObject(s, session_key), "C_DestroyObject " + label + "-session");
      return;
    }
  }
}

// What breaks p11ha's key-birth policy (DESIGN.md "Replication") on the token's copy of `key`.
std::vector<std::string> PolicyProblems(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) {
  std::vector<std::string> problems;
  for (auto [type, name] : {std::pair{CKA_EXTRACTABLE, "CKA_EXTRACTABLE"},
                            std::pair{CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED"},
                            std::pair{CKA_SENSITIVE, "CKA_SENSITIVE"}}) {
    const std::optional<bool> value = Flag(s, key, type);
    if (value != true) problems.push_back(std::string(name) + " is " + (value ? "FALSE" : "unreadable") + ", expected TRUE");
  }
  return problems;
}

// Checks one item of the set on `s` and returns its fingerprint; problems go to `problems`.
std::string InspectItem(CK_SESSION_HANDLE s, const std::string& prefix, const Item& item, bool check_policy,
                        std::vector<std::string>* problems) {
  const std::string label = Label(prefix, item);
  auto problem = [&](const std::string& text) { problems->push_back(label + ": " + text); };
  std::map<CK_OBJECT_CLASS, std::vector<CK_OBJECT_HANDLE>> by_class;
  const std::vector<CK_OBJECT_HANDLE> all = FindLabel(s, label);
  for (CK_OBJECT_HANDLE h : all) by_class[Ulong(s, h, CKA_CLASS).value_or(~0UL)].push_back(h);
  std::set<CK_OBJECT_CLASS> expected;
  if (IsPair(item.kind)) expected = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
  else if (IsSecret(item.kind)) expected = {CKO_SECRET_KEY};
  else expected = {item.kind == Kind::kCert ? CKO_CERTIFICATE : CKO_DATA};
  bool complete = all.size() == expected.size();
  for (CK_OBJECT_CLASS c : expected) complete = complete && by_class[c].size() == 1;
  if (!complete) {
    std::string seen;
    for (auto& [c, handles] : by_class) seen += " " + std::string(ClassName(c)) + "x" + std::to_string(handles.size());
    problem("expected " + std::to_string(expected.size()) + " object(s) exactly once, found" +
            (seen.empty() ? std::string(" none") : seen));
    return "missing";
  }
  const CK_OBJECT_HANDLE key = IsPair(item.kind) ? by_class[CKO_PRIVATE_KEY][0] : all[0];
  if (check_policy && (IsPair(item.kind) || IsSecret(item.kind))) {
    for (const std::string& p : PolicyProblems(s, key)) problem(p);
  }
  const std::string message = "replication-probe " + label;
  const Bytes data(message.begin(), message.end());
  Bytes fingerprint;
  try {
    if (item.kind == Kind::kRsa) {
      const CK_OBJECT_HANDLE pub = by_class[CKO_PUBLIC_KEY][0];
      const Bytes modulus = Attribute(s, pub, CKA_MODULUS).value_or(Bytes{});
      const Bytes exponent = Attribute(s, pub, CKA_PUBLIC_EXPONENT).value_or(Bytes{});
      if (Attribute(s, key, CKA_MODULUS) != modulus) problem("private and public modulus differ");
      if (!VerifyRsaSha256(modulus, exponent, data, Sign(s, CKM_SHA256_RSA_PKCS, key, data)))
        problem("the RSA signature does not verify under the public key (OpenSSL)");
      fingerprint = Sha256(modulus);
    } else if (IsPair(item.kind)) {
      const Bytes point = BarePoint(Attribute(s, by_class[CKO_PUBLIC_KEY][0], CKA_EC_POINT).value_or(Bytes{}));
      const Bytes digest = Sha256(data);
      const std::string curve = item.kind == Kind::kP384 ? "secp384r1" : "prime256v1";
      if (!VerifyEcdsa(curve, point, digest, Sign(s, CKM_ECDSA, key, digest)))
        problem("the ECDSA signature does not verify under the public key (OpenSSL)");
      fingerprint = Sha256(point);
    } else if (item.kind == Kind::kGeneric) {
      fingerprint = Sign(s, CKM_SHA256_HMAC, key, data);
    } else if (IsAes(item.kind)) {
      fingerprint = Encrypt(s, CK_MECHANISM{CKM_AES_ECB, nullptr, 0}, key, kZeroBlock);
      const Bytes expected_block = ExpectedBlock(prefix, item.kind);
      if (!expected_block.empty() && fingerprint != expected_block)
        problem("AES-ECB(0) is " + Hex(fingerprint) + ", OpenSSL says the known value gives " + Hex(expected_block));
    } else {
      fingerprint = Sha256(Attribute(s, key, CKA_VALUE).value_or(Bytes{}));
      if (item.kind == Kind::kData && fingerprint != Sha256(Known(prefix, "data")))
        problem("CKA_VALUE is not the value the probe stored");
    }
  } catch (const std::exception& e) {
    problem(e.what());
  }
  return Hex(fingerprint);
}

int InspectSet(CK_SESSION_HANDLE s, const std::string& prefix, bool check_policy) {
  std::vector<std::string> problems;
  for (const Item& item : kSet) {
    const std::string fp = InspectItem(s, prefix, item, check_policy, &problems);
    std::printf("fp %s %s\n", item.name, fp.c_str());
  }
  for (const std::string& p : problems) std::printf("problem: %s\n", p.c_str());
  return problems.empty() ? 0 : 1;
}

int Create(const std::string& token, const std::string& pin, const std::string& prefix) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  for (const Item& item : kSet) {
    CreateItem(s, prefix, item);
    std::printf("made %s\n", Label(prefix, item).c_str());
  }
  return InspectSet(s, prefix, false);
}

int AesCross(const std::string& token_a, const std::string& token_b, const std::string& pin,
             const std::vector<std::string>& labels) {
  const CK_SESSION_HANDLE a = OpenToken(token_a, pin), b = OpenToken(token_b, pin);
  int rc = 0;
  for (const std::string& label : labels) {
    const std::vector<CK_OBJECT_HANDLE> key_a = FindLabel(a, label, CKO_SECRET_KEY);
    const std::vector<CK_OBJECT_HANDLE> key_b = FindLabel(b, label, CKO_SECRET_KEY);
    if (key_a.size() != 1 || key_b.size() != 1) {
      std::printf("problem: %s: %zu on %s, %zu on %s\n", label.c_str(), key_a.size(), token_a.c_str(),
                  key_b.size(), token_b.c_str());
      rc = 1;
      continue;
    }
    for (bool forward : {true, false}) {
      // 100 bytes: not a block multiple, so the padding is exercised as well.
      const Bytes plain = RandomBytes(100);
      Bytes iv = RandomBytes(16);
      CK_MECHANISM cbc{CKM_AES_CBC_PAD, iv.data(), iv.size()};
      const Bytes cipher = Encrypt(forward ? a : b, cbc, forward ? key_a[0] : key_b[0], plain);
      const Bytes back = Decrypt(forward ? b : a, cbc, forward ? key_b[0] : key_a[0], cipher);
      const std::string from = forward ? token_a : token_b, to = forward ? token_b : token_a;
      const bool ok = back == plain && cipher != plain;
      std::printf("%s %s: encrypted on %s, decrypted on %s\n", ok ? "ok" : "problem:", label.c_str(), from.c_str(),
                  to.c_str());
      if (!ok) rc = 1;
    }
  }
  return rc;
}

int List(const std::string& token, const std::string& pin) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  std::vector<std::string> lines;
  for (CK_OBJECT_HANDLE h : Find(s, {})) {
    lines.push_back(std::string(ClassName(Ulong(s, h, CKA_CLASS).value_or(~0UL))) + " " +
                    Text(Attribute(s, h, CKA_LABEL)));
  }
  std::sort(lines.begin(), lines.end());
  for (const std::string& line : lines) std::printf("%s\n", line.c_str());
  return 0;
}

// Runs `make` and turns a refusal into exit 3 with its "rv" line.
template <typename Make>
int Refusable(Make&& make) {
  try {
    make();
    std::printf("rv CKR_OK\n");
    return 0;
  } catch (const CallFailed& e) {
    std::printf("rv %s\n%s\n", RvName(e.rv()).c_str(), e.what());
    return 3;
  }
}

int Gen(const std::string& token, const std::string& pin, const std::string& kind, const std::string& label) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  const Bytes id = Sha256(label);
  return Refusable([&] {
    if (kind == "ec" || kind == "rsa") {
      GeneratePair(s, kind == "ec" ? Kind::kP256 : Kind::kRsa, label, Bytes(id.begin(), id.begin() + 8));
    } else if (kind == "aes") {
      Template t = KeyTemplate(label, Bytes(id.begin(), id.begin() + 8));
      t.Ulong(CKA_VALUE_LEN, 32).Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true);
      CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
      CK_OBJECT_HANDLE h = 0;
      Check(p11->C_GenerateKey(s, &m, t.data(), t.size(), &h), "C_GenerateKey " + label);
    } else if (kind == "data") {
      Template t;
      t.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Add(CKA_LABEL, label)
          .Add(CKA_VALUE, id);
      CK_OBJECT_HANDLE h = 0;
      Check(p11->C_CreateObject(s, t.data(), t.size(), &h), "C_CreateObject " + label);
    } else {
      throw std::runtime_error("gen: unknown kind " + kind);
    }
  });
}

int Destroy(const std::string& token, const std::string& pin, const std::string& label) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  const std::vector<CK_OBJECT_HANDLE> found = FindLabel(s, label);
  if (found.empty()) {
    std::printf("problem: nothing labelled %s\n", label.c_str());
    return 1;
  }
  const int rc = Refusable([&] {
    for (CK_OBJECT_HANDLE h : found) Check(p11->C_DestroyObject(s, h), "C_DestroyObject " + label);
  });
  std::printf("destroyed %zu\n", rc == 0 ? found.size() : 0);
  return rc;
}

// Creates count EC pairs and destroys every other one right after its successor is made, so
// creations and deletions interleave with whatever another process does on the same members.
int Churn(const std::string& token, const std::string& pin, int count, const std::string& prefix) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  // Wall-clock bounds, so the script can tell that two churns really overlapped.
  const auto now_ms = [] {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count());
  };
  std::printf("started %lld\n", now_ms());
  std::fflush(stdout);  // the script starts the other churn once it sees this line
  std::map<int, PairHandles> made;
  std::vector<std::string> errors;
  for (int i = 0; i < count; ++i) {
    const std::string label = prefix + "-" + std::to_string(i);
    try {
      const Bytes id = Sha256(label);
      made[i] = GeneratePair(s, Kind::kP256, label, Bytes(id.begin(), id.begin() + 8));
    } catch (const std::exception& e) {
      errors.push_back(e.what());
    }
    if (i % 2 == 1 && made.count(i - 1) != 0) {
      const std::string victim = prefix + "-" + std::to_string(i - 1);
      const CK_RV rv_priv = p11->C_DestroyObject(s, made[i - 1].priv);
      const CK_RV rv_pub = p11->C_DestroyObject(s, made[i - 1].pub);
      if (rv_priv == CKR_OK && rv_pub == CKR_OK) {
        made.erase(i - 1);
        std::printf("deleted %s\n", victim.c_str());
      } else {
        errors.push_back("C_DestroyObject " + victim + " -> " + RvName(rv_priv) + " / " + RvName(rv_pub));
      }
    }
  }
  std::printf("finished %lld\n", now_ms());
  for (auto& [i, handles] : made) std::printf("kept %s-%d\n", prefix.c_str(), i);
  for (const std::string& e : errors) std::printf("problem: %s\n", e.c_str());
  return errors.empty() ? 0 : 1;
}

// DESIGN.md "Hidden objects": the domain key and tombstones are p11ha's own. Every query an
// application could make, with every chunk size that could show a filtering slip.
int Hidden(const std::string& token, const std::string& pin) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY, data = CKO_DATA;
  CK_KEY_TYPE aes = CKK_AES;
  std::string domain = "p11ha-domain", tombstone = "p11ha-tombstone", application = "p11ha";
  struct Query {
    const char* name;
    std::vector<CK_ATTRIBUTE> match;
    bool must_be_empty;
  };
  const std::vector<Query> queries = {
      {"everything", {}, false},
      {"token objects", {{CKA_TOKEN, &kTrue, 1}}, false},
      {"private objects", {{CKA_PRIVATE, &kTrue, 1}}, false},
      {"secret keys", {{CKA_CLASS, &secret, sizeof secret}}, false},
      {"AES keys", {{CKA_KEY_TYPE, &aes, sizeof aes}}, false},
      {"trusted keys", {{CKA_TRUSTED, &kTrue, 1}}, true},
      {"data objects", {{CKA_CLASS, &data, sizeof data}}, false},
      {"label p11ha-domain", {{CKA_LABEL, domain.data(), domain.size()}}, true},
      {"secret key p11ha-domain",
       {{CKA_CLASS, &secret, sizeof secret}, {CKA_LABEL, domain.data(), domain.size()}}, true},
      {"label p11ha-tombstone", {{CKA_LABEL, tombstone.data(), tombstone.size()}}, true},
      {"application p11ha",
       {{CKA_CLASS, &data, sizeof data}, {CKA_APPLICATION, application.data(), application.size()}}, true},
  };
  int leaks = 0;
  for (const Query& query : queries) {
    for (CK_ULONG chunk : {1UL, 1000UL}) {
      const std::vector<CK_OBJECT_HANDLE> found = Find(s, query.match, chunk);
      std::printf("query '%s' (chunk %lu): %zu\n", query.name, chunk, found.size());
      if (query.must_be_empty && !found.empty()) {
        std::printf("LEAK: query '%s' found %zu object(s)\n", query.name, found.size());
        ++leaks;
      }
      for (CK_OBJECT_HANDLE h : found) {
        const CK_OBJECT_CLASS c = Ulong(s, h, CKA_CLASS).value_or(~0UL);
        const std::string label = Text(Attribute(s, h, CKA_LABEL));
        const bool own = label == domain || label == tombstone ||
                         (c == CKO_DATA && Text(Attribute(s, h, CKA_APPLICATION)) == application) ||
                         (c == CKO_SECRET_KEY && Flag(s, h, CKA_TRUSTED) == true);
        if (own) {
          std::printf("LEAK: query '%s' returned %s '%s'\n", query.name, ClassName(c), label.c_str());
          ++leaks;
        }
      }
    }
  }
  return leaks == 0 ? 0 : 1;
}

// `selector` is a label, or "id=TEXT" for a key whose CKA_ID is TEXT's bytes (SunPKCS11 leaves
// the private key's label empty and puts the alias in CKA_ID).
int KeyCheck(const std::string& token, const std::string& pin, const std::string& selector, const std::string& pem) {
  const CK_SESSION_HANDLE s = OpenToken(token, pin);
  const bool by_id = selector.rfind("id=", 0) == 0;
  std::string wanted = by_id ? selector.substr(3) : selector;
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  const std::vector<CK_OBJECT_HANDLE> keys = Find(
      s, {{CKA_CLASS, &private_class, sizeof private_class}, {by_id ? CKA_ID : CKA_LABEL, wanted.data(), wanted.size()}});
  if (keys.size() != 1) {
    std::printf("problem: %zu private keys match %s\n", keys.size(), selector.c_str());
    return 1;
  }
  const std::vector<std::string> problems = PolicyProblems(s, keys[0]);
  for (const std::string& p : problems) std::printf("problem: %s\n", p.c_str());
  const int rc = problems.empty() ? 0 : 1;
  const std::string message = "key-check " + selector + " on " + token;
  const Bytes data(message.begin(), message.end());
  const bool rsa = Ulong(s, keys[0], CKA_KEY_TYPE) == CKK_RSA;
  const Bytes signature =
      rsa ? Sign(s, CKM_SHA256_RSA_PKCS, keys[0], data) : Sign(s, CKM_ECDSA, keys[0], Sha256(data));
  const bool verified = VerifyWithPem(pem, data, signature);
  std::printf("signature %s under %s\n", verified ? "verifies" : "DOES NOT verify", pem.c_str());
  return verified ? rc : 1;
}

int Dispatch(const std::vector<std::string>& a) {
  const std::string& verb = a[0];
  if (verb == "create" && (a.size() == 5 || (a.size() == 6 && a[5] == "--explicit-policy"))) {
    explicit_policy = a.size() == 6;
    return Create(a[2], a[3], a[4]);
  }
  if (verb == "check" && a.size() == 5) return InspectSet(OpenToken(a[2], a[3]), a[4], true);
  if (verb == "aes-cross" && a.size() >= 6) {
    return AesCross(a[2], a[4], a[3], std::vector<std::string>(a.begin() + 5, a.end()));
  }
  if (verb == "list" && a.size() == 4) return List(a[2], a[3]);
  if (verb == "gen" && a.size() == 6) return Gen(a[2], a[3], a[4], a[5]);
  if (verb == "destroy" && a.size() == 5) return Destroy(a[2], a[3], a[4]);
  if (verb == "churn" && a.size() == 6) return Churn(a[2], a[3], std::atoi(a[4].c_str()), a[5]);
  if (verb == "hidden" && a.size() == 4) return Hidden(a[2], a[3]);
  if (verb == "key-check" && a.size() == 6) return KeyCheck(a[2], a[3], a[4], a[5]);
  return -1;
}

}  // namespace
}  // namespace replication_probe

int main(int argc, char** argv) {
  using namespace replication_probe;
  // The verb comes first, then the module; Dispatch sees {verb, module, rest...}.
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 2) {
    std::fprintf(stderr, "usage: replication_probe VERB MODULE ... (see the head of replication_probe.cpp)\n");
    return 2;
  }
  int rc = 1;
  try {
    LoadModule(args[1]);
    rc = Dispatch(args);
    if (rc < 0) {
      std::fprintf(stderr, "replication_probe: bad usage of '%s'\n", args[0].c_str());
      rc = 2;
    }
  } catch (const std::exception& e) {
    std::printf("problem: %s\n", e.what());
    std::fprintf(stderr, "replication_probe: %s\n", e.what());
    rc = 1;
  }
  std::fflush(stdout);
  UnloadModule();
  return rc;
}
