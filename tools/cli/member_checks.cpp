// SPDX-License-Identifier: Apache-2.0
// The admission checks of `p11ha member check|add NAME` (issue 5): what Luna lists as HA
// prerequisites, each compared with the other configured members the CLI reached.
#include "tools/cli/member_checks.h"

#include <algorithm>
#include <cstdio>

#include "provider/core/error.h"
#include "provider/member/member_pool.h"
#include "replication/domain_key.h"
#include "replication/tombstone.h"
#include "tools/cli/command.h"

namespace p11ha::cli {
namespace {

using replication::CheckValue;
using replication::CheckValueHex;
using Level = CheckLine::Level;

std::string Join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : separator) + item;
  return text;
}

std::string Plural(std::size_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

std::string Bytes(CK_ULONG bytes) {
  if (bytes < 10 * 1024) return std::to_string(bytes) + " bytes";
  if (bytes < 10 * 1024 * 1024) return std::to_string(bytes / 1024) + " KiB";
  return std::to_string(bytes / (1024 * 1024)) + " MiB";
}

// A token field that holds a number, not CK_UNAVAILABLE_INFORMATION or CK_EFFECTIVELY_INFINITE.
bool Reported(CK_ULONG value) { return value != CK_UNAVAILABLE_INFORMATION && value != CK_EFFECTIVELY_INFINITE; }

// Free memory counts only next to a total: CK_EFFECTIVELY_INFINITE is 0, so a token that
// reports neither says 0 free without meaning full.
std::optional<CK_ULONG> FreeMemory(CK_ULONG free, CK_ULONG total) {
  if (free == CK_UNAVAILABLE_INFORMATION) return std::nullopt;
  if (free == 0 && !Reported(total)) return std::nullopt;
  return free;
}

// What an object roughly takes on a token: PKCS#11 has no portable answer (C_GetObjectSize is
// optional and counts differently per vendor), so this errs large.
CK_ULONG EstimatedBytes(const replication::ObjectSummary& summary) {
  switch (summary.object_class) {
    case CKO_PRIVATE_KEY: return 4096;
    case CKO_SECRET_KEY: return 512;
    case CKO_PUBLIC_KEY: return 1024;
    default: return 2048;
  }
}

MemberObjects Scan(replication::TokenSession& token, CK_OBJECT_HANDLE domain_key, const std::string& label) {
  MemberObjects out;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes}};
  std::vector<CK_OBJECT_HANDLE> handles;
  if (CK_RV rv = token.FindObjects(match, handles); rv != CKR_OK) {
    out.error = std::string("C_FindObjects: ") + RvName(rv);
    return out;
  }
  for (CK_OBJECT_HANDLE handle : handles) {
    replication::ObjectSummary summary;
    CK_RV rv = replication::ReadSummary(token, handle, domain_key, label, summary);
    if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) continue;  // deleted meanwhile
    if (rv != CKR_OK) {
      out.error = "object handle " + std::to_string(handle) + " could not be read: " + RvName(rv);
      return out;
    }
    if (summary.kind == replication::ObjectKind::kDomainKey) continue;
    if (summary.kind == replication::ObjectKind::kApplication) ++out.application;
    out.objects[summary.identity].push_back({handle, std::move(summary)});
  }
  std::vector<replication::Tombstone> tombstones;
  if (CK_RV rv = replication::FindTombstones(token, tombstones); rv != CKR_OK) {
    out.error = std::string("reading tombstones: ") + RvName(rv);
    return out;
  }
  for (const replication::Tombstone& tombstone : tombstones) out.tombstoned.insert(tombstone.identity);
  out.scanned = true;
  return out;
}

class Checker {
 public:
  Checker(Cluster& cluster, const config::Config& config, std::size_t target, const AdmissionOptions& options)
      : cluster_(cluster),
        config_(config),
        options_(options),
        member_(cluster.pool().at(target)),
        name_(member_.name()) {
    result_.target = target;
    result_.domain_keys.assign(config.members.size(), CK_INVALID_HANDLE);
    result_.objects.resize(config.members.size());
  }

  Admission Run() {
    if (!Reachable()) return std::move(result_);
    Others();
    const bool logged_in = Login();
    Domain(logged_in);
    Mechanisms();
    TokenFlags();
    Objects(logged_in);
    return std::move(result_);
  }

 private:
  void Add(Level level, std::string check, std::string detail, std::string fix = {}) {
    result_.lines.push_back({level, std::move(check), std::move(detail), std::move(fix)});
  }
  replication::ReconcileMember& Entry(std::size_t i) { return cluster_.members()[i]; }
  replication::ReconcileMember& Target() { return Entry(result_.target); }

  bool Reachable() {
    if (member_.up()) {
      Add(Level::kOk, "reachable", "connected to " + member_.config().token);
      return true;
    }
    std::string why = OneLine(member_.Status().last_error);
    if (why.empty()) why = Target().note.empty() ? "not connected" : Target().note;
    Add(Level::kFail, "reachable", name_ + " is down (" + why + ")",
        "check its module, token URI and the HSM itself; no other check can run until it connects");
    return false;
  }

  // The other members' domain: the check value most of them hold (strictly), NAME not voting,
  // so that a new member cannot tie a small cluster.
  void Others() {
    std::map<CheckValue, std::size_t> votes;
    std::vector<std::optional<CheckValue>> held(config_.members.size());
    std::vector<std::string> reached, not_reached;
    for (std::size_t i = 0; i < config_.members.size(); ++i) {
      if (i == result_.target) continue;
      replication::ReconcileMember& other = Entry(i);
      if (other.token == nullptr) {
        not_reached.push_back(other.name + " (" + (other.note.empty() ? "not reached" : other.note) + ")");
        continue;
      }
      try {
        std::vector<replication::FoundDomainKey> keys =
            replication::FindDomainKeys(*other.token, config_.domain_key_label);
        bool mixed =
            std::any_of(keys.begin(), keys.end(), [&](const auto& k) { return k.check != keys.front().check; });
        reached.push_back(other.name);
        any_domain_ = any_domain_ || !keys.empty();
        if (keys.empty() || mixed) continue;
        held[i] = keys.front().check;
        handles_[i] = keys.front().handle;
        ++votes[*held[i]];
      } catch (const replication::TokenError& e) {
        not_reached.push_back(other.name + " (" + e.what() + ": " + RvName(e.rv()) + ")");
      }
    }
    std::size_t best = 0, ties = 0;
    for (const auto& [check, count] : votes) {
      if (count > best) {
        best = count, ties = 1;
        result_.domain = check;
      } else if (count == best) {
        ++ties;
      }
    }
    if (ties > 1) result_.domain.reset();
    for (std::size_t i = 0; i < held.size(); ++i) {
      if (!held[i] || !result_.domain || *held[i] != *result_.domain) continue;
      result_.peers.push_back(i);
      result_.domain_keys[i] = handles_[i];
      peer_names_.push_back(Entry(i).name);
    }
    others_reached_ = reached.size();
    if (reached.empty() && not_reached.empty()) {
      Add(Level::kWarn, "cluster", "no other member is configured: nothing to compare " + name_ + " with");
    } else if (reached.empty()) {
      Add(Level::kWarn, "cluster", "no other member reached, nothing to compare with: " + Join(not_reached, "; "));
    } else if (!not_reached.empty()) {
      Add(Level::kWarn, "cluster", "compared with " + Join(reached) + "; not reached: " + Join(not_reached, "; "));
    } else {
      Add(Level::kOk, "cluster", "compared with " + Join(reached));
    }
  }

  bool Login() {
    if (Target().token != nullptr) {
      Add(Level::kOk, "user PIN", "the cluster's user PIN logs in on " + name_);
      return true;
    }
    const std::string& note = Target().note;
    if (note.rfind("login not tried", 0) == 0) {
      Add(Level::kFail, "user PIN", "not tried on " + name_ + note.substr(std::string("login not tried").size()),
          "correct [auth] pin_file (or --pin-file): another member refused it, and every wrong PIN counts "
          "towards the HSM's lockout");
    } else if (note.rfind("C_Login failed", 0) == 0) {
      std::string fix =
          "set " + name_ + "'s user PIN to the cluster's (C_SetPIN / softhsm2-util) or correct [auth] pin_file";
      if (note.find("CKR_PIN_LOCKED") != std::string::npos)
        fix = "the user PIN of " + name_ + " is locked: its SO must reset it (C_InitPIN)";
      if (note.find("CKR_USER_PIN_NOT_INITIALIZED") != std::string::npos)
        fix = "initialise the user PIN of " + name_ + " (C_InitPIN) with the cluster's";
      Add(Level::kFail, "user PIN", name_ + " refused the cluster's user PIN (" + note + ")", fix);
    } else {
      Add(Level::kFail, "user PIN", name_ + ": no logged-in session (" + note + ")",
          "check " + name_ + " (p11ha status)");
    }
    return false;
  }

  void Domain(bool logged_in) {
    const std::string check = "domain key";
    if (!logged_in) return Add(Level::kSkip, check, "not checked: needs the login");
    std::vector<replication::FoundDomainKey> keys;
    try {
      keys = replication::FindDomainKeys(*Target().token, config_.domain_key_label);
    } catch (const replication::TokenError& e) {
      return Add(Level::kFail, check, std::string(e.what()) + ": " + RvName(e.rv()),
                 "check " + name_ + " (p11ha status)");
    }
    const std::string cluster = result_.domain ? CheckValueHex(*result_.domain) : std::string();
    for (const auto& key : keys) {
      if (key.check != keys.front().check) {
        return Add(
            Level::kFail, check,
            name_ + " holds two different domain keys labelled \"" + config_.domain_key_label + "\"",
            "remove the one that is not the cluster's" + (cluster.empty() ? std::string() : " (" + cluster + ")"));
      }
    }
    if (!result_.domain && others_reached_ > 0) {
      return Add(Level::kFail, check,
                 "the other reached members hold no common domain key (" +
                     std::string(any_domain_ ? "no majority" : "none holds one") + ")",
                 !any_domain_ ? "create one: p11ha domain create --shares N --threshold M --out DIR"
                              : "see which member differs with p11ha verify");
    }
    if (keys.empty()) {
      if (!result_.domain)
        return Add(Level::kWarn, check, name_ + " holds no domain key, and no other member was compared");
      return Add(Level::kFail, check, name_ + " holds no domain key (the cluster's is " + cluster + ")",
                 "p11ha domain install --member " + name_ + " --share … --so-pin-file …");
    }
    const std::string held = CheckValueHex(keys.front().check);
    if (!result_.domain)
      return Add(Level::kWarn, check, name_ + " holds domain key " + held + "; no other member was compared");
    if (keys.front().check != *result_.domain) {
      return Add(Level::kFail, check, name_ + " holds domain key " + held + ", the cluster's is " + cluster,
                 name_ + " belongs to another domain: re-initialise its token and run p11ha domain install --member " +
                     name_ + " --share … with the cluster's shares, or take it out of the config");
    }
    result_.domain_keys[result_.target] = keys.front().handle;
    Add(Level::kOk, check, held + ", as " + Join(peer_names_));
  }

  void Mechanisms() {
    const MechanismTable& own = member_.mechanisms();
    const CK_MECHANISM_INFO* wrap = FindMechanism(own, CKM_AES_KEY_WRAP_PAD);
    if (wrap == nullptr || (wrap->flags & (CKF_WRAP | CKF_UNWRAP)) != (CKF_WRAP | CKF_UNWRAP)) {
      Add(Level::kFail, "replication mechanism",
          name_ +
              (wrap == nullptr ? " does not offer CKM_AES_KEY_WRAP_PAD"
                               : " offers CKM_AES_KEY_WRAP_PAD without wrap and unwrap") +
              ", which copies keys between members",
          "enable CKM_AES_KEY_WRAP_PAD (RFC 5649) on " + name_ + ", or use an HSM that offers it");
    } else {
      Add(Level::kOk, "replication mechanism", "CKM_AES_KEY_WRAP_PAD wraps and unwraps");
    }
    std::vector<const MechanismTable*> tables;
    for (std::size_t i = 0; i < config_.members.size(); ++i)
      if (i != result_.target && cluster_.pool().at(i).up()) tables.push_back(&cluster_.pool().at(i).mechanisms());
    if (tables.empty()) return Add(Level::kSkip, "mechanisms", "not compared: no other member is up");
    const MechanismTable common = IntersectMechanisms(tables);
    std::vector<std::string> missing;
    for (const auto& [type, info] : common)
      if (FindMechanism(own, type) == nullptr) missing.push_back(MechanismName(type));
    if (missing.empty()) {
      return Add(Level::kOk, "mechanisms",
                 "offers all " + std::to_string(common.size()) + " mechanisms the other " +
                     Plural(tables.size(), "member") + " offer (" + std::to_string(own.size()) + " in all)");
    }
    Add(Level::kFail, "mechanisms",
        name_ + " lacks " + std::to_string(missing.size()) + " of the " + std::to_string(common.size()) +
            " mechanisms every other member offers: " + Join(missing),
        "enable them on " + name_ +
            " (HSM policy or partition capabilities), or use a model that offers them: "
            "applications would fail on it");
  }

  void TokenFlags() {
    CK_TOKEN_INFO info{};
    CK_RV rv =
        member_.Call("C_GetTokenInfo", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetTokenInfo, member_.slot(), &info);
    if (rv != CKR_OK) {
      Add(Level::kFail, "token flags", std::string("C_GetTokenInfo: ") + RvName(rv),
          "check " + name_ + " (p11ha status)");
      return;
    }
    std::vector<std::string> bad, fixes, warn;
    auto problem = [&](bool found, const std::string& what, const std::string& fix) {
      if (!found) return;
      bad.push_back(what);
      fixes.push_back(fix);
    };
    problem(!(info.flags & CKF_TOKEN_INITIALIZED), "token not initialised", "initialise the token (C_InitToken)");
    problem(!(info.flags & CKF_USER_PIN_INITIALIZED), "user PIN not initialised",
            "set the user PIN to the cluster's (C_InitPIN as SO)");
    problem(info.flags & CKF_WRITE_PROTECTED, "write-protected", "make the token writable");
    problem(info.flags & CKF_USER_PIN_LOCKED, "user PIN locked", "have the SO reset the user PIN (C_InitPIN)");
    problem(info.flags & CKF_USER_PIN_FINAL_TRY, "user PIN at its final try",
            "log in once with the right PIN, or have the SO reset it, before a wrong one locks it");
    if (info.flags & CKF_USER_PIN_COUNT_LOW) warn.push_back("user PIN retry count low");
    if (info.flags & CKF_USER_PIN_TO_BE_CHANGED) warn.push_back("user PIN must be changed");
    if (info.flags & CKF_SO_PIN_LOCKED) warn.push_back("SO PIN locked (domain install needs the SO)");
    const bool login_required = (info.flags & CKF_LOGIN_REQUIRED) != 0;
    std::vector<std::string> differ;
    for (std::size_t i = 0; i < config_.members.size(); ++i) {
      Member& other = cluster_.pool().at(i);
      if (i == result_.target || !other.up()) continue;
      if (((other.token_info().flags & CKF_LOGIN_REQUIRED) != 0) != login_required) differ.push_back(other.name());
    }
    problem(!differ.empty(),
            std::string("CKF_LOGIN_REQUIRED ") + (login_required ? "set" : "clear") + ", unlike " + Join(differ),
            "use a token whose login policy matches the other members'");
    if (!bad.empty()) {
      bad.insert(bad.end(), warn.begin(), warn.end());
      Add(Level::kFail, "token flags", Join(bad), Join(fixes, "; "));
    } else if (!warn.empty()) {
      Add(Level::kWarn, "token flags", Join(warn));
    } else {
      Add(Level::kOk, "token flags",
          std::string("initialised, user PIN set, writable, login ") + (login_required ? "required" : "not required") +
              " as on the others");
    }
    Sessions(info);
    info_ = info;
  }

  void Sessions(const CK_TOKEN_INFO& info) {
    if (!Reported(info.ulMaxRwSessionCount) && !Reported(info.ulMaxSessionCount)) {
      return Add(Level::kOk, "sessions", "no session limit reported");
    }
    const bool rw_full = Reported(info.ulMaxRwSessionCount) && info.ulRwSessionCount != CK_UNAVAILABLE_INFORMATION &&
                         info.ulRwSessionCount >= info.ulMaxRwSessionCount;
    std::string detail =
        "at most " + (Reported(info.ulMaxSessionCount) ? std::to_string(info.ulMaxSessionCount) : "?") + " sessions, " +
        (Reported(info.ulMaxRwSessionCount) ? std::to_string(info.ulMaxRwSessionCount) : "?") + " r/w";
    if (rw_full)
      return Add(Level::kFail, "sessions", detail + ", all in use",
                 "close sessions on " + name_ + " or raise its limit");
    Add(Level::kOk, "sessions", detail);
  }

  void Objects(bool logged_in) {
    for (std::size_t i : result_.peers) {
      result_.objects[i] = Scan(*Entry(i).token, result_.domain_keys[i], config_.domain_key_label);
      if (!result_.objects[i].scanned) {
        Add(Level::kFail, "cluster objects",
            Entry(i).name + "'s objects could not be listed: " + result_.objects[i].error,
            "check " + Entry(i).name + " (p11ha status), then run this again");
      }
    }
    if (!logged_in) {
      Add(Level::kSkip, "free memory", "not checked: needs the login");
      return Add(Level::kSkip, "objects", "not checked: needs the login");
    }
    MemberObjects& own = result_.objects[result_.target];
    own = Scan(*Target().token, result_.domain_keys[result_.target], config_.domain_key_label);
    if (!own.scanned) {
      Add(Level::kSkip, "free memory", "not checked: the objects could not be listed");
      return Add(Level::kFail, "objects", name_ + "'s objects could not be listed: " + own.error,
                 "check " + name_ + " (p11ha status)");
    }
    FreeSpace(own);
    std::size_t local = 0;
    for (const auto& [identity, copies] : own.objects)
      if (copies.front().summary.kind == replication::ObjectKind::kApplication && copies.front().summary.unwrappable)
        ++local;
    std::string detail =
        name_ + " holds " + Plural(own.application, "application object") +
        (local > 0 ? " (" + std::to_string(local) + " cannot be replicated and would stay on it)" : "");
    if (own.application == 0) return Add(Level::kOk, "objects", name_ + " holds no application objects");
    if (!options_.adding)
      return Add(Level::kWarn, "objects", detail + "; member add keeps them only with --preserve-existing");
    if (!options_.preserve_existing) {
      return Add(Level::kFail, "objects", detail,
                 "--preserve-existing keeps them and copies them to the other members; or empty the token first");
    }
    Add(Level::kOk, "objects", detail + ": kept, and copied to the other members (--preserve-existing)");
  }

  // The bytes the cluster's objects NAME lacks would take, against what the token says is free.
  void FreeSpace(const MemberObjects& own) {
    CK_ULONG need_public = 0, need_private = 0;
    std::size_t count = 0;
    std::set<std::string> seen;
    for (std::size_t i : result_.peers) {
      for (const auto& [identity, copies] : result_.objects[i].objects) {
        if (own.objects.contains(identity) || !seen.insert(identity).second) continue;
        const replication::ObjectSummary& summary = copies.front().summary;
        (summary.is_private ? need_private : need_public) += EstimatedBytes(summary);
        ++count;
      }
    }
    const std::string need = Plural(count, "object") + " to copy, about " + Bytes(need_public) + " public and " +
                             Bytes(need_private) + " private (a rough estimate)";
    std::optional<CK_ULONG> free_public = FreeMemory(info_.ulFreePublicMemory, info_.ulTotalPublicMemory);
    std::optional<CK_ULONG> free_private = FreeMemory(info_.ulFreePrivateMemory, info_.ulTotalPrivateMemory);
    if (!free_public && !free_private) return Add(Level::kOk, "free memory", "not reported by the token; " + need);
    std::vector<std::string> short_of;
    if (free_public && (*free_public == 0 || *free_public < need_public))
      short_of.push_back("public " + Bytes(*free_public) + " free");
    if (free_private && (*free_private == 0 || *free_private < need_private))
      short_of.push_back("private " + Bytes(*free_private) + " free");
    if (!short_of.empty()) {
      return Add(Level::kFail, "free memory", Join(short_of) + "; " + need,
                 "free memory on " + name_ + " (delete objects it does not need) or use a larger partition");
    }
    Add(Level::kOk, "free memory",
        (free_public ? "public " + Bytes(*free_public) + " free" : std::string("public not reported")) + ", " +
            (free_private ? "private " + Bytes(*free_private) + " free" : std::string("private not reported")) + "; " +
            need);
  }

  Cluster& cluster_;
  const config::Config& config_;
  const AdmissionOptions options_;
  Member& member_;
  const std::string name_;
  Admission result_;
  std::map<std::size_t, CK_OBJECT_HANDLE> handles_;  // other members' single domain key
  std::vector<std::string> peer_names_;
  std::size_t others_reached_ = 0;
  bool any_domain_ = false;  // some other reached member holds a domain key
  CK_TOKEN_INFO info_{};
};

}  // namespace

bool Admission::Failed() const { return Failures() > 0; }

std::size_t Admission::Failures() const {
  return static_cast<std::size_t>(
      std::count_if(lines.begin(), lines.end(), [](const CheckLine& line) { return line.level == Level::kFail; }));
}

Admission CheckAdmission(Cluster& cluster, const config::Config& config, std::size_t target,
                         const AdmissionOptions& options) {
  return Checker(cluster, config, target, options).Run();
}

void PrintChecks(const Admission& admission, std::ostream& out) {
  for (const CheckLine& line : admission.lines) {
    const char* tag = line.level == Level::kOk     ? "ok    "
                      : line.level == Level::kWarn ? "warn  "
                      : line.level == Level::kFail ? "FAIL  "
                                                   : "skip  ";
    out << "  " << tag << line.check << ": " << OneLine(line.detail);
    if (line.level == Level::kFail && !line.fix.empty()) out << "; fix: " << OneLine(line.fix);
    out << "\n";
  }
}

std::string MechanismName(CK_MECHANISM_TYPE type) {
  struct Named {
    CK_MECHANISM_TYPE type;
    const char* name;
  };
#define P11HA_CKM(name) Named{name, #name},
  // clang-format off
  static constexpr Named kNames[] = {
    P11HA_CKM(CKM_RSA_PKCS_KEY_PAIR_GEN) P11HA_CKM(CKM_RSA_PKCS) P11HA_CKM(CKM_RSA_9796) P11HA_CKM(CKM_RSA_X_509)
    P11HA_CKM(CKM_MD5_RSA_PKCS) P11HA_CKM(CKM_SHA1_RSA_PKCS) P11HA_CKM(CKM_RSA_PKCS_OAEP)
    P11HA_CKM(CKM_RSA_X9_31_KEY_PAIR_GEN) P11HA_CKM(CKM_RSA_PKCS_PSS) P11HA_CKM(CKM_SHA1_RSA_PKCS_PSS)
    P11HA_CKM(CKM_SHA224_RSA_PKCS) P11HA_CKM(CKM_SHA256_RSA_PKCS) P11HA_CKM(CKM_SHA384_RSA_PKCS)
    P11HA_CKM(CKM_SHA512_RSA_PKCS) P11HA_CKM(CKM_SHA224_RSA_PKCS_PSS) P11HA_CKM(CKM_SHA256_RSA_PKCS_PSS)
    P11HA_CKM(CKM_SHA384_RSA_PKCS_PSS) P11HA_CKM(CKM_SHA512_RSA_PKCS_PSS)
    P11HA_CKM(CKM_DSA_KEY_PAIR_GEN) P11HA_CKM(CKM_DSA_PARAMETER_GEN) P11HA_CKM(CKM_DSA) P11HA_CKM(CKM_DSA_SHA1)
    P11HA_CKM(CKM_DSA_SHA224) P11HA_CKM(CKM_DSA_SHA256) P11HA_CKM(CKM_DSA_SHA384) P11HA_CKM(CKM_DSA_SHA512)
    P11HA_CKM(CKM_DH_PKCS_KEY_PAIR_GEN) P11HA_CKM(CKM_DH_PKCS_PARAMETER_GEN) P11HA_CKM(CKM_DH_PKCS_DERIVE)
    P11HA_CKM(CKM_DES_KEY_GEN) P11HA_CKM(CKM_DES_ECB) P11HA_CKM(CKM_DES_CBC) P11HA_CKM(CKM_DES_CBC_PAD)
    P11HA_CKM(CKM_DES2_KEY_GEN) P11HA_CKM(CKM_DES3_KEY_GEN) P11HA_CKM(CKM_DES3_ECB) P11HA_CKM(CKM_DES3_CBC)
    P11HA_CKM(CKM_DES3_CBC_PAD) P11HA_CKM(CKM_DES3_CMAC)
    P11HA_CKM(CKM_MD5) P11HA_CKM(CKM_MD5_HMAC) P11HA_CKM(CKM_SHA_1) P11HA_CKM(CKM_SHA_1_HMAC)
    P11HA_CKM(CKM_SHA224) P11HA_CKM(CKM_SHA224_HMAC) P11HA_CKM(CKM_SHA256) P11HA_CKM(CKM_SHA256_HMAC)
    P11HA_CKM(CKM_SHA384) P11HA_CKM(CKM_SHA384_HMAC) P11HA_CKM(CKM_SHA512) P11HA_CKM(CKM_SHA512_HMAC)
    P11HA_CKM(CKM_GENERIC_SECRET_KEY_GEN)
    P11HA_CKM(CKM_DES_ECB_ENCRYPT_DATA) P11HA_CKM(CKM_DES_CBC_ENCRYPT_DATA) P11HA_CKM(CKM_DES3_ECB_ENCRYPT_DATA)
    P11HA_CKM(CKM_DES3_CBC_ENCRYPT_DATA) P11HA_CKM(CKM_AES_ECB_ENCRYPT_DATA) P11HA_CKM(CKM_AES_CBC_ENCRYPT_DATA)
    P11HA_CKM(CKM_EC_KEY_PAIR_GEN) P11HA_CKM(CKM_ECDSA) P11HA_CKM(CKM_ECDSA_SHA1) P11HA_CKM(CKM_ECDSA_SHA224)
    P11HA_CKM(CKM_ECDSA_SHA256) P11HA_CKM(CKM_ECDSA_SHA384) P11HA_CKM(CKM_ECDSA_SHA512)
    P11HA_CKM(CKM_ECDH1_DERIVE) P11HA_CKM(CKM_ECDH1_COFACTOR_DERIVE)
    P11HA_CKM(CKM_EC_EDWARDS_KEY_PAIR_GEN) P11HA_CKM(CKM_EDDSA)
    P11HA_CKM(CKM_AES_KEY_GEN) P11HA_CKM(CKM_AES_ECB) P11HA_CKM(CKM_AES_CBC) P11HA_CKM(CKM_AES_CBC_PAD)
    P11HA_CKM(CKM_AES_MAC) P11HA_CKM(CKM_AES_MAC_GENERAL) P11HA_CKM(CKM_AES_CTR) P11HA_CKM(CKM_AES_GCM)
    P11HA_CKM(CKM_AES_CCM) P11HA_CKM(CKM_AES_CMAC) P11HA_CKM(CKM_AES_CMAC_GENERAL)
    P11HA_CKM(CKM_AES_KEY_WRAP) P11HA_CKM(CKM_AES_KEY_WRAP_PAD)
  };
  // clang-format on
#undef P11HA_CKM
  for (const Named& named : kNames)
    if (named.type == type) return named.name;
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%08lX", static_cast<unsigned long>(type));
  return hex;
}

}  // namespace p11ha::cli
