// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/secure_bytes.h"
#include "provider/member/member.h"
#include "provider/member/member_token_session.h"
#include "replication/archive.h"
#include "replication/archive_transfer.h"
#include "tools/cli/cluster.h"
#include "tools/cli/progress.h"

namespace p11ha::cli {

// A token outside the cluster (a backup HSM), opened through its own module and logged in as
// the user. Throws Stop when it cannot be reached, the PIN is refused, or it has no domain key
// or two different ones.
class OutsideToken {
 public:
  OutsideToken(const std::string& uri, const std::string& module, const SecureBytes& pin, const std::string& domain_label,
               std::chrono::milliseconds call_timeout);
  ~OutsideToken();
  OutsideToken(const OutsideToken&) = delete;
  OutsideToken& operator=(const OutsideToken&) = delete;

  replication::ArchiveToken token() const { return {session_.get(), domain_key_}; }
  const replication::CheckValue& domain() const { return domain_; }
  const std::string& name() const { return member_->name(); }

 private:
  std::unique_ptr<Member> member_;
  std::unique_ptr<MemberTokenSession> session_;
  CK_OBJECT_HANDLE domain_key_ = CK_INVALID_HANDLE;
  replication::CheckValue domain_{};
};

// The cluster members an archive verb reads or writes: all of them, or `--member NAME`.
// `every` demands that each chosen member be reached and hold the cluster's domain key
// (writes); otherwise members that are not are skipped with a warning (reads). Throws Stop.
std::vector<replication::ArchiveToken> ChooseMembers(Cluster& cluster, const std::string& member, bool every);

// Refuses (exit 1, nothing written) unless every target holds no application object; `action`
// ("a restore", "a backup to a token") names what needs the empty target.
void RequireEmpty(const std::vector<replication::ArchiveToken>& targets, const std::string& domain_label,
                  const std::string& action);

// Refuses (exit 1) unless the archive was made under `domain`.
void RequireDomain(const replication::Archive& archive, const replication::CheckValue& domain,
                   const std::string& where);

// Checks, on each target, that every identity of the manifest is there; returns the count of
// application objects on the first target, for the summary line. Throws Stop when one is missing.
std::size_t CheckAgainstManifest(const replication::ArchiveManifest& manifest,
                                 const std::vector<replication::ArchiveToken>& targets, const std::string& domain_label);

}  // namespace p11ha::cli
