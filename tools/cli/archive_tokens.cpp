// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/archive_tokens.h"

#include <algorithm>
#include <iostream>
#include <set>

#include "provider/core/error.h"
#include "replication/domain_key.h"
#include "tools/cli/command.h"

namespace p11ha::cli {

using replication::ArchiveToken;
using replication::CheckValueHex;

namespace {

[[noreturn]] void Refuse(const std::string& message) { throw Stop{kExitProblem, message}; }

}  // namespace

OutsideToken::OutsideToken(const std::string& uri, const std::string& module, const SecureBytes& pin,
                           const std::string& domain_label, std::chrono::milliseconds call_timeout)
    : member_(std::make_unique<Member>(0, config::MemberConfig{uri, module, uri}, call_timeout)) {
  try {
    member_->Load();
  } catch (const CkError& e) {
    throw Stop{kExitUsage, module + ": " + OneLine(e.what())};
  }
  if (member_->Connect()) member_->Activate();
  if (!member_->up()) Refuse(uri + " cannot be reached (" + OneLine(member_->Status().last_error) + ")");
  if (CK_RV rv = member_->Login(CKU_USER, pin); rv != CKR_OK) {
    Refuse(uri + ": C_Login failed: " + RvName(rv) +
           (PinRefused(rv) ? " (the token's user PIN: --token-pin-file, else the cluster's)" : ""));
  }
  try {
    session_ = std::make_unique<MemberTokenSession>(*member_);
    std::vector<replication::FoundDomainKey> keys = replication::FindDomainKeys(*session_, domain_label);
    if (keys.empty()) {
      Refuse(uri + " holds no domain key \"" + domain_label +
             "\"; install it first: p11ha domain install --token URI --module PATH --share ...");
    }
    for (const replication::FoundDomainKey& key : keys)
      if (key.check != keys.front().check) Refuse(uri + " holds two different domain keys; remove one");
    domain_key_ = keys.front().handle;
    domain_ = keys.front().check;
  } catch (const replication::TokenError& e) {
    Refuse(std::string(e.what()) + ": " + RvName(e.rv()));
  } catch (const CkError& e) {
    Refuse(uri + ": " + OneLine(e.what()));
  }
}

OutsideToken::~OutsideToken() {
  session_.reset();
  member_->Disconnect();
}

std::vector<ArchiveToken> ChooseMembers(Cluster& cluster, const std::string& member, bool every) {
  std::vector<ArchiveToken> chosen;
  bool named = false;
  for (const replication::ReconcileMember& m : cluster.members()) {
    if (!member.empty() && m.name != member) continue;
    named = true;
    std::string why;
    if (m.token == nullptr) {
      why = m.note.empty() ? "down" : m.note;
    } else if (m.foreign_domain) {
      why = m.note;
    } else if (m.domain_key == CK_INVALID_HANDLE) {
      why = "holds no domain key (p11ha domain install --member " + m.name + " --share ...)";
    }
    if (why.empty()) {
      chosen.push_back({m.token, m.domain_key});
    } else if (every || !member.empty()) {
      Refuse(m.name + ": " + OneLine(why) + "; nothing was written");
    } else {
      std::cerr << "p11ha: warning: " << m.name << " is skipped: " << OneLine(why) << "\n";
    }
  }
  if (!named) throw Stop{kExitUsage, "no member named '" + member + "' in the config"};
  if (chosen.empty()) Refuse("no member of the cluster's domain could be reached");
  return chosen;
}

void RequireEmpty(const std::vector<ArchiveToken>& targets, const std::string& domain_label, const std::string& action) {
  for (const ArchiveToken& target : targets) {
    std::size_t held = replication::ListApplicationObjects(target, domain_label).size();
    if (held != 0) {
      Refuse(target.token->name() + " holds " + std::to_string(held) +
             " objects; " + action +
             " needs an empty target (add --merge to keep them and add the archive's); nothing was written");
    }
  }
}

void RequireDomain(const replication::Archive& archive, const replication::CheckValue& domain,
                   const std::string& where) {
  if (archive.manifest.domain != domain) {
    Refuse("the " + std::string(replication::ArchiveKindName(archive.manifest.kind)) + " is of domain " +
           CheckValueHex(archive.manifest.domain) + " but " + where + " holds domain " + CheckValueHex(domain) +
           ": its keys cannot be unwrapped there; nothing was written");
  }
}

std::size_t CheckAgainstManifest(const replication::ArchiveManifest& manifest, const std::vector<ArchiveToken>& targets,
                                 const std::string& domain_label) {
  std::size_t first_count = 0;
  for (std::size_t t = 0; t < targets.size(); ++t) {
    std::set<std::string> held;
    for (replication::TokenObject& object : replication::ListApplicationObjects(targets[t], domain_label))
      held.insert(std::move(object.summary.identity));
    if (t == 0) first_count = held.size();
    for (const std::string& identity : manifest.identities) {
      if (held.count(identity) == 0) {
        Refuse(targets[t].token->name() + " lacks object " + replication::IdentityHex(identity).substr(0, 16) +
               " of the manifest after the restore");
      }
    }
  }
  return first_count;
}

}  // namespace p11ha::cli
