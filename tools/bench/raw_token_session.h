// SPDX-License-Identifier: Apache-2.0
// replication::TokenSession straight over one session of a module, with none of p11ha's call
// workers, timing or quirks: the floors run replication's own recipe (PrepareCopy, ApplyCopy)
// directly on SoftHSM, so that they make the same calls with the same templates.
#pragma once

#include <string>
#include <vector>

#include "bench_module.h"
#include "replication/token_session.h"

namespace p11ha::bench {

// The domain key on the session's token (the config's default label, which the bench keeps).
CK_OBJECT_HANDLE FindDomainKey(Module& module, CK_SESSION_HANDLE session);

class RawTokenSession : public replication::TokenSession {
 public:
  RawTokenSession(Module& module, CK_SESSION_HANDLE session, std::string name)
      : module_(module), session_(session), name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  CK_RV Login(CK_USER_TYPE user, const SecureBytes& pin) override;
  CK_RV Logout() override;
  CK_RV CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) override;
  CK_RV CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& copy) override;
  CK_RV DestroyObject(CK_OBJECT_HANDLE object) override;
  CK_RV FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) override;
  CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override;
  CK_RV SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override;
  CK_RV WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                std::vector<CK_BYTE>& wrapped) override;
  CK_RV UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                  std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) override;

 private:
  Module& module_;
  const CK_SESSION_HANDLE session_;
  const std::string name_;
};

}  // namespace p11ha::bench
