// SPDX-License-Identifier: Apache-2.0
#include "replication/domain_key.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <memory>

#include "replication/shamir.h"

namespace p11ha::replication {
namespace {

// The probe is public by design: the check value must be computable from the key alone.
constexpr std::array<CK_BYTE, 32> kProbeKey{};

CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;
CK_OBJECT_CLASS kSecretKeyClass = CKO_SECRET_KEY;
CK_KEY_TYPE kAesKeyType = CKK_AES;

CK_ATTRIBUTE Bool(CK_ATTRIBUTE_TYPE type, bool value) { return {type, value ? &kTrue : &kFalse, sizeof(CK_BBOOL)}; }

template <typename T>
CK_ATTRIBUTE Of(CK_ATTRIBUTE_TYPE type, T& value) {
  return {type, &value, sizeof value};
}

CK_ATTRIBUTE Bytes(CK_ATTRIBUTE_TYPE type, const void* data, std::size_t size) {
  return {type, const_cast<void*>(data), static_cast<CK_ULONG>(size)};
}

void Check(CK_RV rv, TokenSession& token, const std::string& what) {
  if (rv != CKR_OK) throw TokenError(token.name() + ": " + what + " failed", rv);
}

CheckValue CheckValueOfBlob(std::span<const CK_BYTE> blob) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_Digest(blob.data(), blob.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  CheckValue check{};
  std::copy_n(digest.begin(), check.size(), check.begin());
  return check;
}

// Logged in for a scope; logs out however the scope is left. Per PKCS#11 the login covers the
// whole token, which is why nobody may be logged in when the ceremony starts.
class LoginScope {
 public:
  LoginScope(TokenSession& token, CK_USER_TYPE user, const SecureBytes* pin) : token_(token) {
    if (pin == nullptr) throw std::invalid_argument("domain key: no PIN given");
    CK_RV rv = token.Login(user, *pin);
    if (rv != CKR_USER_ALREADY_LOGGED_IN) Check(rv, token, user == CKU_SO ? "C_Login as SO" : "C_Login as user");
  }
  ~LoginScope() { token_.Logout(); }
  LoginScope(const LoginScope&) = delete;
  LoginScope& operator=(const LoginScope&) = delete;

 private:
  TokenSession& token_;
};

std::string AlreadyHasMessage(const std::string& token, const CheckValue& held, const CheckValue& wanted) {
  return token + " already has domain key " + CheckValueHex(held) + "; this is domain " + CheckValueHex(wanted) +
         "; nothing was installed";
}

std::optional<CheckValue> OneCheckValue(TokenSession& token, const std::vector<FoundDomainKey>& keys) {
  if (keys.empty()) return std::nullopt;
  for (const FoundDomainKey& key : keys) {
    if (key.check != keys.front().check) {
      throw DomainRefusal(token.name() + " holds two different domain keys (" + CheckValueHex(keys.front().check) +
                          ", " + CheckValueHex(key.check) + ")");
    }
  }
  return keys.front().check;
}

}  // namespace

CheckValue ComputeCheckValue(const SecureBytes& key) {
  if (key.size() != kDomainKeyBytes) throw std::invalid_argument("domain key: not 32 bytes");
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  std::array<unsigned char, kProbeKey.size() + 16> blob{};
  int size = 0, tail = 0;
  if (ctx == nullptr) throw std::runtime_error("domain check value: out of memory");
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_wrap_pad(), nullptr, key.data(), nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), blob.data(), &size, kProbeKey.data(), static_cast<int>(kProbeKey.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), blob.data() + size, &tail) != 1) {
    throw std::runtime_error("domain check value: AES key wrap failed");
  }
  return CheckValueOfBlob(std::span<const CK_BYTE>(blob.data(), static_cast<std::size_t>(size + tail)));
}

SecureBytes GenerateDomainKey() {
  std::array<std::uint8_t, kDomainKeyBytes> zeros{};
  SecureBytes key(zeros);
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
    throw std::runtime_error("cannot generate the domain key: RAND_bytes failed");
  }
  return key;
}

CheckValue ReadCheckValue(TokenSession& token, CK_OBJECT_HANDLE domain_key) {
  // A session key with the known probe value; extractable and not WRAP_WITH_TRUSTED, so any
  // key allowed to wrap can wrap it.
  CK_ATTRIBUTE probe_template[] = {
      Of(CKA_CLASS, kSecretKeyClass), Of(CKA_KEY_TYPE, kAesKeyType),
      Bytes(CKA_VALUE, kProbeKey.data(), kProbeKey.size()),
      Bool(CKA_TOKEN, false), Bool(CKA_PRIVATE, false), Bool(CKA_SENSITIVE, false), Bool(CKA_EXTRACTABLE, true),
  };
  CK_OBJECT_HANDLE probe = CK_INVALID_HANDLE;
  Check(token.CreateObject(probe_template, probe), token, "C_CreateObject of the check-value probe");
  std::vector<CK_BYTE> blob;
  CK_RV rv = token.WrapKey(CKM_AES_KEY_WRAP_PAD, domain_key, probe, blob);
  token.DestroyObject(probe);  // a session object: gone with the session if this fails
  Check(rv, token, "C_WrapKey(CKM_AES_KEY_WRAP_PAD) of the check-value probe under the domain key");
  return CheckValueOfBlob(blob);
}

std::vector<FoundDomainKey> FindDomainKeys(TokenSession& token, const std::string& label) {
  CK_ATTRIBUTE match[] = {Of(CKA_CLASS, kSecretKeyClass), Bytes(CKA_LABEL, label.data(), label.size())};
  std::vector<CK_OBJECT_HANDLE> handles;
  Check(token.FindObjects(match, handles), token, "searching for the domain key");
  std::vector<FoundDomainKey> keys;
  for (CK_OBJECT_HANDLE handle : handles) keys.push_back({handle, ReadCheckValue(token, handle)});
  return keys;
}

std::optional<CheckValue> ReadDomainCheckValue(TokenSession& token, const std::string& label,
                                               const SecureBytes& user_pin) {
  LoginScope user(token, CKU_USER, &user_pin);
  return OneCheckValue(token, FindDomainKeys(token, label));
}

std::optional<CheckValue> PreflightDomainKey(TokenSession& token, const DomainKeyParams& params) {
  std::optional<CheckValue> held = ReadDomainCheckValue(token, params.label, *params.user_pin);
  LoginScope so(token, CKU_SO, params.so_pin);
  return held;
}

InstallOutcome InstallDomainKey(TokenSession& token, const SecureBytes& key, const DomainKeyParams& params) {
  const CheckValue check = ComputeCheckValue(key);
  if (std::optional<CheckValue> held = ReadDomainCheckValue(token, params.label, *params.user_pin)) {
    if (*held != check) throw DomainRefusal(AlreadyHasMessage(token.name(), *held, check));
    return InstallOutcome::kAlreadyInstalled;
  }

  // Step 1, as SO: only the SO may set CKA_TRUSTED, and only on a public object it creates. A
  // session object, so the key is never stored unencrypted in the token (research §2).
  CK_ATTRIBUTE unwrap_template[] = {
      Bool(CKA_PRIVATE, true), Bool(CKA_SENSITIVE, true), Bool(CKA_WRAP_WITH_TRUSTED, true)};
  CK_MECHANISM_TYPE mechanisms[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP};
  CK_ATTRIBUTE staging_template[] = {
      Of(CKA_CLASS, kSecretKeyClass), Of(CKA_KEY_TYPE, kAesKeyType), Bytes(CKA_VALUE, key.data(), key.size()),
      Bool(CKA_TOKEN, false), Bool(CKA_PRIVATE, false), Bool(CKA_TRUSTED, true),
      Bool(CKA_SENSITIVE, true), Bool(CKA_EXTRACTABLE, false),
      Bool(CKA_WRAP, true), Bool(CKA_UNWRAP, true), Bool(CKA_ENCRYPT, false), Bool(CKA_DECRYPT, false),
      Bool(CKA_DERIVE, false), Bool(CKA_SIGN, false), Bool(CKA_VERIFY, false),
      // Never changeable later: without them a user could let the key decrypt (research §2).
      Bytes(CKA_ALLOWED_MECHANISMS, mechanisms, sizeof mechanisms),
      Bytes(CKA_UNWRAP_TEMPLATE, unwrap_template, sizeof unwrap_template),
  };
  CK_OBJECT_HANDLE staging = CK_INVALID_HANDLE;
  {
    LoginScope so(token, CKU_SO, params.so_pin);
    Check(token.CreateObject(staging_template, staging), token, "C_CreateObject of the staging key as SO");
  }
  // The public session object outlives the SO's logout; it must go whatever happens next.
  struct DestroyStaging {
    TokenSession& token;
    CK_OBJECT_HANDLE handle;
    ~DestroyStaging() { token.DestroyObject(handle); }
  } destroy_staging{token, staging};

  // Step 2, as user: a private copy keeps CKA_TRUSTED, and MODIFIABLE=F freezes it.
  LoginScope user(token, CKU_USER, params.user_pin);
  CK_ATTRIBUTE copy_template[] = {
      Bool(CKA_TOKEN, true), Bool(CKA_PRIVATE, true),
      Bytes(CKA_LABEL, params.label.data(), params.label.size()), Bytes(CKA_ID, check.data(), check.size()),
      Bool(CKA_MODIFIABLE, false),
  };
  CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
  Check(token.CopyObject(staging, copy_template, domain_key), token, "C_CopyObject of the staging key as user");

  // Trust what the token does, not what it was asked to do.
  CheckValue got{};
  try {
    got = ReadCheckValue(token, domain_key);
  } catch (...) {
    token.DestroyObject(domain_key);
    throw;
  }
  if (got != check) {
    token.DestroyObject(domain_key);
    throw DomainRefusal(token.name() + ": the installed key has check value " + CheckValueHex(got) + ", not " +
                        CheckValueHex(check) + "; it was removed again");
  }
  return InstallOutcome::kInstalled;
}

std::size_t RemoveDomainKey(TokenSession& token, const CheckValue& check, const DomainKeyParams& params) {
  LoginScope user(token, CKU_USER, params.user_pin);
  std::size_t removed = 0;
  for (const FoundDomainKey& key : FindDomainKeys(token, params.label)) {
    if (key.check != check) continue;
    Check(token.DestroyObject(key.handle), token, "C_DestroyObject of domain key " + CheckValueHex(check));
    ++removed;
  }
  return removed;
}

void InstallDomainKeyOnAll(std::span<TokenSession* const> tokens, const SecureBytes& key,
                           const DomainKeyParams& params,
                           const std::function<void(TokenSession&, InstallOutcome)>& installed,
                           const std::function<void(TokenSession&, const std::exception* error)>& removed) {
  const CheckValue check = ComputeCheckValue(key);
  std::vector<TokenSession*> done;
  try {
    for (TokenSession* token : tokens) {
      InstallOutcome outcome = InstallDomainKey(*token, key, params);
      if (outcome == InstallOutcome::kInstalled) done.push_back(token);
      if (installed) installed(*token, outcome);
    }
  } catch (...) {
    // No half-state (DESIGN.md): what this call installed goes again, newest first.
    for (auto it = done.rbegin(); it != done.rend(); ++it) {
      try {
        RemoveDomainKey(**it, check, params);
        if (removed) removed(**it, nullptr);
      } catch (const std::exception& e) {
        if (removed) removed(**it, &e);
      }
    }
    throw;
  }
}

std::vector<ShareFile> SplitDomainKey(const SecureBytes& key, unsigned threshold, unsigned count) {
  const CheckValue domain = ComputeCheckValue(key);
  std::vector<shamir::Share> parts = shamir::Split(std::span<const std::uint8_t>(key.data(), key.size()),
                                                   threshold, count);
  std::vector<ShareFile> files(parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    files[i].domain = domain;
    files[i].threshold = threshold;
    files[i].shares = count;
    files[i].index = parts[i].index;
    files[i].data = std::move(parts[i].data);
  }
  return files;
}

SecureBytes RecoverDomainKey(std::span<const ShareFile> shares, CheckValue& domain) {
  if (shares.empty()) throw DomainRefusal("no shares given");
  const ShareFile& first = shares.front();
  domain = first.domain;
  std::vector<shamir::Share> parts;
  for (const ShareFile& share : shares) {
    if (share.domain != first.domain) {
      throw DomainRefusal(share.source + " is a share of another domain (" + CheckValueHex(share.domain) + ") than " +
                          first.source + " (" + CheckValueHex(first.domain) + ")");
    }
    if (share.threshold != first.threshold || share.shares != first.shares) {
      throw DomainRefusal(share.source + " says " + std::to_string(share.threshold) + " of " +
                          std::to_string(share.shares) + " shares, " + first.source + " says " +
                          std::to_string(first.threshold) + " of " + std::to_string(first.shares));
    }
    if (share.data.size() != kDomainKeyBytes) {
      throw DomainRefusal(share.source + ": the share is " + std::to_string(share.data.size()) + " bytes, not " +
                          std::to_string(kDomainKeyBytes));
    }
    for (const shamir::Share& part : parts) {
      if (part.index == share.index) {
        throw DomainRefusal(share.source + " is share " + std::to_string(share.index) +
                            " again; each custodian's share counts once");
      }
    }
    parts.push_back({static_cast<std::uint8_t>(share.index),
                     SecureBytes(std::span<const std::uint8_t>(share.data.data(), share.data.size()))});
  }
  if (parts.size() < first.threshold) {
    throw DomainRefusal("too few shares: domain " + CheckValueHex(domain) + " needs " +
                        std::to_string(first.threshold) + " of its " + std::to_string(first.shares) +
                        " shares, " + std::to_string(parts.size()) + " given; nothing was installed");
  }
  SecureBytes key = shamir::Combine(parts);
  if (ComputeCheckValue(key) != domain) {
    throw DomainRefusal("the shares do not rebuild domain " + CheckValueHex(domain) +
                        ": one of them is forged or from another split of the key");
  }
  return key;
}

}  // namespace p11ha::replication
