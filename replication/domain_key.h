// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/secure_bytes.h"
#include "replication/check_value.h"
#include "replication/share_file.h"
#include "replication/token_session.h"

namespace p11ha::replication {

// The replication domain key: AES-256, identical on every member (DESIGN.md "Replication").
inline constexpr std::size_t kDomainKeyBytes = 32;

// The domain check value. A token never shows the domain key, and CKA_CHECK_VALUE is absent on
// unwrapped copies (research/softhsm-2.6.1.md §5), but AES key wrap is deterministic. So:
//   check value = first 8 bytes of SHA-256( AES-256 key wrap with padding, RFC 5649,
//                                           of the 32-byte all-zero probe key under the DK )
// A token computes it with C_WrapKey(CKM_AES_KEY_WRAP_PAD) of a session probe key; anyone
// holding the key computes it offline. SoftHSM 2.6.1 zero-pads to a multiple of 8 before
// RFC 5649 (research §0.2); the 32-byte probe needs no padding, so both agree.
CheckValue ComputeCheckValue(const SecureBytes& key);

// 32 bytes from OpenSSL's RAND_bytes; throws std::runtime_error when the RNG fails.
SecureBytes GenerateDomainKey();

// An action refused for safety (CLI exit 1): bad or too few shares, another domain, a member
// that already holds a different domain key. The message is for the operator.
class DomainRefusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A token call that failed. what() says which token and call; rv() is the token's answer,
// which the caller names (replication/ has no table of CKR names).
class TokenError : public std::runtime_error {
 public:
  TokenError(const std::string& what, CK_RV rv) : std::runtime_error(what), rv_(rv) {}
  CK_RV rv() const { return rv_; }

 private:
  CK_RV rv_;
};

struct DomainKeyParams {
  std::string label = "p11ha-domain";  // config replication.domain_key_label
  const SecureBytes* so_pin = nullptr;
  const SecureBytes* user_pin = nullptr;
};

struct FoundDomainKey {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CheckValue check{};
};

// The secret keys labelled `label` on the token and their check values. The user must be
// logged in (the domain key is private). Throws TokenError.
std::vector<FoundDomainKey> FindDomainKeys(TokenSession& token, const std::string& label);

// The check value of one domain key on the token (user logged in). Throws TokenError.
CheckValue ReadCheckValue(TokenSession& token, CK_OBJECT_HANDLE domain_key);

// Logs the user in, reads the check value of the token's domain key, logs out. nullopt when the
// token has none; DomainRefusal when it holds two different ones. Throws TokenError.
std::optional<CheckValue> ReadDomainCheckValue(TokenSession& token, const std::string& label,
                                               const SecureBytes& user_pin);

// Before anything is installed: proves the user and SO PINs on the token (each login followed
// by a logout) and returns the check value of the domain key it already holds, if any.
std::optional<CheckValue> PreflightDomainKey(TokenSession& token, const DomainKeyParams& params);

enum class InstallOutcome { kInstalled, kAlreadyInstalled };

// Installs `key` on the token with the SO-then-user staging recipe (research §0, §2): a private,
// trusted, wrap/unwrap-only, non-extractable, non-modifiable token key with CKA_LABEL =
// params.label and CKA_ID = the check value, whose unwrap template fixes CKA_PRIVATE,
// CKA_SENSITIVE and CKA_WRAP_WITH_TRUSTED (not CKA_TOKEN, so session keys can be copied as
// session objects). Reads the result back and compares check values. The same key already
// there: kAlreadyInstalled; a different one: DomainRefusal. Nobody may be logged in on the
// token before, and nobody is after. Throws TokenError, DomainRefusal.
InstallOutcome InstallDomainKey(TokenSession& token, const SecureBytes& key, const DomainKeyParams& params);

// Destroys the token's domain keys with this check value (never another domain's). Returns how
// many. Throws TokenError.
std::size_t RemoveDomainKey(TokenSession& token, const CheckValue& check, const DomainKeyParams& params);

// Installs on every token in order, so that every member gets the key or none does: when token
// k fails, the key is removed again from the tokens before k that this call installed it on,
// and the failure is rethrown. `installed` hears each success; `removed` each token taken back,
// with the reason when the removal itself failed (nullptr when it worked).
void InstallDomainKeyOnAll(std::span<TokenSession* const> tokens, const SecureBytes& key,
                           const DomainKeyParams& params,
                           const std::function<void(TokenSession&, InstallOutcome)>& installed,
                           const std::function<void(TokenSession&, const std::exception* error)>& removed);

// One share file per custodian, indices 1..count.
std::vector<ShareFile> SplitDomainKey(const SecureBytes& key, unsigned threshold, unsigned count);

// Rebuilds the key from share files. Refuses (DomainRefusal, naming the file at fault) shares of
// different domains or splits, repeated shares, fewer than the threshold, and a result whose
// check value is not the domain's. Sets `domain` to the shares' check value.
SecureBytes RecoverDomainKey(std::span<const ShareFile> shares, CheckValue& domain);

}  // namespace p11ha::replication
