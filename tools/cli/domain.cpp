// SPDX-License-Identifier: Apache-2.0
// `p11ha domain create|install`: the replication domain ceremony (DESIGN.md "Replication").
// The key exists in clear only in SecureBytes and in the custodians' share files.
#include <CLI/CLI.hpp>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <vector>

#include "config/config.h"
#include "provider/core/error.h"
#include "provider/member/member_pool.h"
#include "provider/member/member_token_session.h"
#include "replication/domain_key.h"
#include "tools/cli/command.h"
#include "tools/cli/inputs.h"

namespace p11ha::cli {
namespace {

namespace fs = std::filesystem;
using replication::CheckValue;
using replication::CheckValueHex;
using replication::DomainKeyParams;
using replication::DomainRefusal;
using replication::InstallOutcome;
using replication::TokenError;

struct DomainOptions {
  std::string config_path;
  std::string so_pin_file;
  std::string pin_file;
  // create
  unsigned shares = 0;
  unsigned threshold = 0;
  std::string out;
  // install
  std::string member;
  std::string token;
  std::string module;
  std::vector<std::string> share_files;
};



[[noreturn]] void Refuse(const std::string& message) { throw Stop{kExitProblem, message}; }
[[noreturn]] void BadUsage(const std::string& message) { throw Stop{kExitUsage, message}; }

std::string Describe(const TokenError& e) { return std::string(e.what()) + ": " + RvName(e.rv()); }

// The SO PIN and the user PIN (--pin-file, else [auth] pin_file, else a prompt): the recipe
// needs both, the SO to mark the key trusted and the user to make it private.
struct Pins {
  SecureBytes so;
  SecureBytes user;
};

Pins ReadPins(const DomainOptions& options, const config::Config& config) {
  Pins pins;
  pins.so = SecretOrStop(options.so_pin_file, "SO PIN", "--so-pin-file");
  pins.user = SecretOrStop(options.pin_file.empty() ? config.pin_file : options.pin_file, "user PIN",
                           "--pin-file (or [auth] pin_file)");
  return pins;
}

// Runs a ceremony step; token failures and refusals become a Stop naming the token.
template <typename Fn>
auto Step(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const DomainRefusal& e) {
    Refuse(e.what());
  } catch (const TokenError& e) {
    Refuse(Describe(e));
  } catch (const CkError& e) {
    Refuse(e.what());
  }
}

void LoadOrStop(Member& member) {
  try {
    member.Load();
  } catch (const CkError& e) {
    BadUsage(e.what());
  }
}

// ---- create ----

// Share files appear in --out only once every member holds the key: until then they wait in a
// private directory inside it, which any failure removes.
class StagedShares {
 public:
  explicit StagedShares(const fs::path& out) : out_(out) {
    std::string pattern = (out / ".p11ha-shares-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) Refuse(out.string() + ": cannot create a directory: " + std::strerror(errno));
    staging_ = pattern;
  }
  ~StagedShares() {
    std::error_code ignored;
    fs::remove_all(staging_, ignored);
  }
  StagedShares(const StagedShares&) = delete;
  StagedShares& operator=(const StagedShares&) = delete;

  void Write(const std::vector<replication::ShareFile>& shares) {
    for (const replication::ShareFile& share : shares) {
      std::string name = "share-" + std::to_string(share.index);
      try {
        replication::WriteShareFile((staging_ / name).string(), share);
      } catch (const replication::ShareFileError& e) {
        Refuse(std::string(e.what()) + "; nothing was installed");
      }
      names_.push_back(name);
    }
  }

  // Moves the shares into --out. On failure the moved ones go back and false is returned.
  bool Publish(std::string& why) {
    std::vector<std::string> moved;
    for (const std::string& name : names_) {
      if (rename((staging_ / name).c_str(), (out_ / name).c_str()) != 0) {
        why = (out_ / name).string() + ": " + std::strerror(errno);
        for (const std::string& back : moved) rename((out_ / back).c_str(), (staging_ / back).c_str());
        return false;
      }
      moved.push_back(name);
    }
    return true;
  }

 private:
  fs::path out_;
  fs::path staging_;
  std::vector<std::string> names_;
};

void PrepareOutDir(const DomainOptions& options) {
  fs::path out(options.out);
  std::error_code error;
  if (fs::exists(out, error) && !fs::is_directory(out, error)) BadUsage(options.out + " is not a directory");
  if (!fs::exists(out, error)) {
    fs::create_directories(out, error);
    if (error) BadUsage(options.out + ": cannot create: " + error.message());
    chmod(options.out.c_str(), 0700);
  }
  for (unsigned i = 1; i <= options.shares; ++i) {
    fs::path share = out / ("share-" + std::to_string(i));
    if (fs::exists(fs::symlink_status(share, error))) {
      Refuse(share.string() + " already exists; shares are never overwritten (choose another --out)");
    }
  }
}

int RunCreate(const DomainOptions& options) {
  if (options.threshold > options.shares) {
    BadUsage("--threshold " + std::to_string(options.threshold) + " is more than --shares " +
             std::to_string(options.shares));
  }
  const std::string path = ConfigPathOrDefault(options.config_path);
  config::Config config = LoadConfigOrStop(path);
  if (config.members.empty()) BadUsage(path + ": no [[member]] to install a domain key on");
  PrepareOutDir(options);
  Pins pins = ReadPins(options, config);
  DomainKeyParams params{config.domain_key_label, &pins.so, &pins.user};

  MemberPool pool(config);
  for (std::size_t i = 0; i < pool.size(); ++i) LoadOrStop(pool.at(i));
  pool.ConnectAll();
  for (std::size_t i = 0; i < pool.size(); ++i) {
    if (!pool.at(i).up()) {
      Refuse(pool.at(i).name() + " is down (" + OneLine(pool.at(i).Status().last_error) +
             "); every member must receive the domain key, so nothing was installed");
    }
  }
  std::vector<std::unique_ptr<MemberTokenSession>> sessions;
  std::vector<replication::TokenSession*> tokens;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    sessions.push_back(Step([&] { return std::make_unique<MemberTokenSession>(pool.at(i)); }));
    tokens.push_back(sessions.back().get());
  }
  // Prove both PINs and look for an existing domain everywhere before changing anything.
  for (replication::TokenSession* token : tokens) {
    if (std::optional<CheckValue> held = Step([&] { return PreflightDomainKey(*token, params); })) {
      Refuse(token->name() + " already has domain key " + CheckValueHex(*held) +
             "; domain create makes a new domain. To add a member to that domain use "
             "'p11ha domain install --member NAME --share ...'");
    }
  }

  SecureBytes key = replication::GenerateDomainKey();
  const CheckValue domain = replication::ComputeCheckValue(key);
  StagedShares staged(options.out);
  staged.Write(replication::SplitDomainKey(key, options.threshold, options.shares));

  auto installed = [&domain](replication::TokenSession& token, InstallOutcome) {
    std::cout << token.name() << ": installed domain key " << CheckValueHex(domain) << "\n";
  };
  bool kept = false;  // a member still holds the key after a failed rollback
  auto removed = [&domain, &kept](replication::TokenSession& token, const std::exception* error) {
    const auto* token_error = dynamic_cast<const TokenError*>(error);
    std::cerr << "p11ha: " << token.name() << ": "
              << (error == nullptr ? "removed domain key " + CheckValueHex(domain) + " again"
                                   : "could not remove domain key " + CheckValueHex(domain) + ": " +
                                         (token_error ? Describe(*token_error) : std::string(error->what())))
              << "\n";
    kept = kept || error != nullptr;
  };
  try {
    Step([&] {
      replication::InstallDomainKeyOnAll(tokens, key, params, installed, removed);
      return 0;
    });
  } catch (Stop& stop) {
    stop.message += kept ? "; no shares were written, and the members named above still hold the key: remove it"
                         : "; no member keeps the new key and no shares were written";
    throw;
  }
  std::string why;
  if (!staged.Publish(why)) {
    for (replication::TokenSession* token : tokens) {
      try {
        replication::RemoveDomainKey(*token, domain, params);
        removed(*token, nullptr);
      } catch (const std::exception& e) {
        removed(*token, &e);
      }
    }
    Refuse("cannot move the shares into place: " + why);
  }
  sessions.clear();
  pool.DisconnectAll();
  std::cout << "wrote " << options.shares << " shares (any " << options.threshold << " rebuild the key) to "
            << options.out << ": share-1 … share-" << options.shares << "; give each to its custodian\n"
            << "domain check value " << CheckValueHex(domain) << "\n";
  return kExitOk;
}

// ---- install ----

std::vector<replication::ShareFile> ReadShares(const std::vector<std::string>& files) {
  std::vector<replication::ShareFile> shares;
  for (const std::string& file : files) {
    try {
      shares.push_back(replication::ReadShareFile(file));
    } catch (const replication::ShareFileError& e) {
      if (e.kind() == replication::ShareFileError::Kind::kUnreadable) BadUsage(e.what());
      Refuse(std::string(e.what()) + "; nothing was installed");
    }
    if (shares.back().readable_by_others) {
      std::cerr << "p11ha: warning: " << file << " is readable by others than its owner (chmod 600 it)\n";
    }
  }
  return shares;
}

// The other members' domains, so that shares of another domain are refused and a member that
// differs is reported. Stops asking once a member refuses the PIN: HSMs lock users out.
void CompareWithOthers(MemberPool& pool, std::optional<std::size_t> target, const CheckValue& domain,
                       const SecureBytes& user_pin, const std::string& label, std::vector<std::string>& same,
                       std::vector<std::string>& other) {
  for (std::size_t i = 0; i < pool.size(); ++i) {
    Member& member = pool.at(i);
    if (target && *target == i) continue;
    if (!member.up()) {
      std::cerr << "p11ha: warning: " << member.name() << " is down; its domain key was not compared\n";
      continue;
    }
    try {
      MemberTokenSession session(member);
      std::optional<CheckValue> held = replication::ReadDomainCheckValue(session, label, user_pin);
      if (!held) continue;
      if (*held == domain) {
        same.push_back(member.name());
      } else {
        other.push_back(member.name() + " (" + CheckValueHex(*held) + ")");
      }
    } catch (const TokenError& e) {
      std::cerr << "p11ha: warning: " << member.name() << ": domain key not compared: " << Describe(e) << "\n";
      if (e.rv() == CKR_PIN_INCORRECT || e.rv() == CKR_PIN_LOCKED) return;
    } catch (const std::exception& e) {
      std::cerr << "p11ha: warning: " << member.name() << ": domain key not compared: " << e.what() << "\n";
    }
  }
}

std::string Join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

int RunInstall(const DomainOptions& options) {
  if (options.member.empty() == options.token.empty()) BadUsage("give either --member NAME or --token URI");
  if (!options.token.empty() && options.module.empty()) BadUsage("--token needs --module PATH");
  if (!options.member.empty() && !options.module.empty()) BadUsage("--module goes with --token, not --member");

  // A backup token may be prepared on a host without a cluster config; with one, its members
  // are compared, so that a backup never receives another domain.
  const std::string path = ConfigPathOrDefault(options.config_path);
  config::Config config;
  bool have_config = !options.member.empty() || !options.config_path.empty() || fs::exists(path);
  if (have_config) config = LoadConfigOrStop(path);
  std::optional<std::size_t> target_index;
  if (!options.member.empty()) {
    for (std::size_t i = 0; i < config.members.size(); ++i)
      if (config.members[i].name == options.member) target_index = i;
    if (!target_index) BadUsage(path + ": no member named '" + options.member + "'");
  }

  std::vector<replication::ShareFile> shares = ReadShares(options.share_files);
  CheckValue domain{};
  SecureBytes key = Step([&] { return replication::RecoverDomainKey(shares, domain); });
  shares.clear();  // wipes the share material now that the key is rebuilt
  Pins pins = ReadPins(options, config);
  DomainKeyParams params{config.domain_key_label, &pins.so, &pins.user};

  MemberPool pool(config);
  for (std::size_t i = 0; i < pool.size(); ++i) LoadOrStop(pool.at(i));
  pool.ConnectAll();
  std::unique_ptr<Member> backup;
  if (!options.token.empty()) {
    backup = std::make_unique<Member>(pool.size(), config::MemberConfig{options.token, options.module, options.token},
                                      std::chrono::milliseconds(config.call_timeout_ms));
    LoadOrStop(*backup);
    if (backup->Connect()) backup->Activate();
  }
  Member& target = backup ? *backup : pool.at(*target_index);
  if (!target.up()) {
    Refuse(target.name() + " is down (" + OneLine(target.Status().last_error) + "); nothing was installed");
  }
  auto session = Step([&] { return std::make_unique<MemberTokenSession>(target); });
  // The target first: it proves both PINs before other members spend a login on them.
  std::optional<CheckValue> held = Step([&] { return PreflightDomainKey(*session, params); });
  if (held && *held != domain) {
    Refuse(target.name() + " already has domain key " + CheckValueHex(*held) + "; this is domain " +
           CheckValueHex(domain) + "; nothing was installed");
  }
  std::vector<std::string> same, other;
  if (have_config) CompareWithOthers(pool, target_index, domain, pins.user, params.label, same, other);
  if (same.empty() && !other.empty()) {
    Refuse("the shares are of another domain (" + CheckValueHex(domain) + ") than the cluster's: " + Join(other) +
           "; nothing was installed");
  }
  if (held) {
    std::cout << target.name() << ": already holds domain key " << CheckValueHex(domain) << "; nothing to do\n";
  } else {
    Step([&] { return replication::InstallDomainKey(*session, key, params); });
    std::cout << target.name() << ": installed domain key " << CheckValueHex(domain) << "\n";
  }
  if (!same.empty()) std::cout << target.name() << ": matches " << Join(same) << "\n";
  if (same.empty() && other.empty()) {
    std::cout << target.name() << ": " << (have_config ? "no other member holds a domain key" : "no cluster config")
              << "; not compared\n";
  }
  std::cout << "domain check value " << CheckValueHex(domain) << "\n";
  session.reset();
  if (backup) backup->Disconnect();
  pool.DisconnectAll();
  if (!other.empty()) {
    std::cerr << "p11ha: these members hold another domain key and are not in this domain: " << Join(other) << "\n";
    return kExitProblem;
  }
  return kExitOk;
}

}  // namespace

Runner RegisterDomain(CLI::App& sub) {
  auto options = std::make_shared<DomainOptions>();
  sub.require_subcommand(1, 1);
  auto add_pins = [&options](CLI::App& verb) {
    AddConfigOption(verb, options->config_path);
    verb.add_option("--so-pin-file", options->so_pin_file, "The members' SO PIN (else a prompt)")->type_name("FILE");
    verb.add_option("--pin-file", options->pin_file, "The members' user PIN (else [auth] pin_file, else a prompt)")
        ->type_name("FILE");
  };

  CLI::App* create = sub.add_subcommand(
      "create", "Generate a domain key, install it on every member, and split it into custodian shares");
  create->add_option("--shares", options->shares, "Number of shares N")->required()->check(CLI::Range(1, 255));
  create->add_option("--threshold", options->threshold, "Shares M needed to rebuild the key")
      ->required()
      ->check(CLI::Range(1, 255));
  create->add_option("--out", options->out, "Directory for share-1 … share-N (mode 0600)")
      ->required()
      ->type_name("DIR");
  add_pins(*create);

  CLI::App* install = sub.add_subcommand(
      "install", "Rebuild the domain key from M shares and install it on one member or a backup token");
  install->add_option("--member", options->member, "A configured member (a new or replaced HSM)")
      ->type_name("NAME");
  install->add_option("--token", options->token, "A token that is not a member (a backup token)")
      ->type_name("URI");
  install->add_option("--module", options->module, "The PKCS#11 module of --token")->type_name("PATH");
  install->add_option("--share", options->share_files, "A share file; repeat once per custodian")
      ->required()
      ->type_name("FILE")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_pins(*install);

  sub.footer(
      "Exit status: 0 on success (or when the key is already there), 1 when refused for safety\n"
      "(too few, damaged or foreign shares, a member down, a different domain key present),\n"
      "2 on bad usage or config.");
  return [options, create] {
    try {
      return create->parsed() ? RunCreate(*options) : RunInstall(*options);
    } catch (const Stop& stop) {
      std::cerr << "p11ha: " << OneLine(stop.message) << "\n";
      return stop.code;
    }
  };
}

}  // namespace p11ha::cli
