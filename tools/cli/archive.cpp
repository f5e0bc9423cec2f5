// SPDX-License-Identifier: Apache-2.0
// `p11ha archive backup|restore|list|verify` and `p11ha package export|import`: what a Luna
// Backup HSM and a Key Synchronization Package do, in one sealed format (replication/archive.h).
// Everything that can refuse is checked before the first object is written.
#include <CLI/CLI.hpp>
#include <sys/stat.h>
#include <time.h>

#include <iostream>
#include <memory>
#include <optional>

#include "provider/core/error.h"
#include "replication/archive.h"
#include "replication/archive_transfer.h"
#include "tools/cli/archive_tokens.h"
#include "tools/cli/command.h"
#include "tools/cli/inputs.h"
#include "tools/cli/object_selector.h"

namespace p11ha::cli {
namespace {

using replication::Archive;
using replication::ArchiveError;
using replication::ArchiveKind;
using replication::ArchiveToken;
using replication::CheckValueHex;

struct ArchiveOptions {
  std::string config_path;
  std::string pin_file;
  std::string token_pin_file;
  std::string passphrase_file;
  std::string file;    // --to or --from
  std::string token;   // --to-token or --from-token
  std::string module;  // with token
  std::string member;
  std::vector<std::string> match;
  bool merge = false;
};

[[noreturn]] void Refuse(const std::string& message) { throw Stop{kExitProblem, message}; }
[[noreturn]] void BadUsage(const std::string& message) { throw Stop{kExitUsage, message}; }

SecureBytes UserPin(const ArchiveOptions& options, const config::Config& config) {
  return UserPinOrStop(options.pin_file, config);
}

// A backup token may have a PIN of its own; by default it shares the cluster's.
SecureBytes TokenPin(const ArchiveOptions& options, const config::Config& config) {
  return options.token_pin_file.empty() ? UserPin(options, config)
                                        : SecretOrStop(options.token_pin_file, "backup token's user PIN",
                                                       "--token-pin-file");
}

SecureBytes Passphrase(const ArchiveOptions& options) {
  return SecretOrStop(options.passphrase_file, "archive passphrase", "--passphrase-file");
}

std::string NowUtc() {
  time_t now = time(nullptr);
  struct tm utc {};
  gmtime_r(&now, &utc);
  char text[32];
  strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::chrono::milliseconds Timeout(const config::Config& config) {
  return std::chrono::milliseconds(config.call_timeout_ms);
}

// Refusals from the transfer keep their token's answer, by name.
template <typename Fn>
auto Transfer(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const replication::TransferError& e) {
    Refuse(std::string(e.what()) + " (" + RvName(e.rv()) + ")");
  }
}

Archive OpenOrStop(const std::string& path, const SecureBytes& passphrase) {
  try {
    return replication::OpenArchive(replication::ReadArchiveFile(path), passphrase, path);
  } catch (const ArchiveError& e) {
    if (e.kind() == ArchiveError::Kind::kUnreadable) BadUsage(e.what());
    Refuse(std::string(e.what()) + "; nothing was written");
  }
}

void WriteOrStop(const std::string& path, const Archive& archive, const SecureBytes& passphrase) {
  try {
    replication::WriteArchiveFile(path, replication::SealArchive(archive, passphrase));
  } catch (const ArchiveError& e) {
    Refuse(e.what());
  }
}

// Checked again, atomically, when the file is written; this spares a long read first.
void RefuseExisting(const std::string& path) {
  struct stat ignored {};
  if (!path.empty() && lstat(path.c_str(), &ignored) == 0)
    Refuse(path + " already exists; archives are never overwritten (choose another file)");
}

Archive MakeArchive(ArchiveKind kind, const config::Config& config, const std::string& source,
                    const replication::CheckValue& domain, replication::CollectedObjects collected) {
  Archive archive;
  archive.manifest.kind = kind;
  archive.manifest.cluster = config.cluster_label;
  archive.manifest.source = source;
  archive.manifest.domain = domain;
  archive.manifest.created = NowUtc();
  for (replication::ArchiveRecord& record : collected.records) {
    archive.manifest.identities.push_back(record.identity);
    archive.records.push_back(std::move(record));
  }
  return archive;
}

// Keys that could not be archived are named; the caller decides what that means for the exit.
std::size_t ReportLeftOut(const replication::CollectedObjects& collected) {
  for (const std::string& object : collected.left_out)
    std::cerr << "p11ha: not archived (the key cannot leave its token): " << object << "\n";
  return collected.left_out.size();
}

// ---- backup ----

int RunBackup(const ArchiveOptions& options) {
  if (options.file.empty() == options.token.empty()) BadUsage("give either --to FILE or --to-token URI");
  if (!options.token.empty() && options.module.empty()) BadUsage("--to-token needs --module PATH");
  if (!options.file.empty() && options.merge) BadUsage("--merge goes with --to-token");
  RefuseExisting(options.file);
  config::Config config = LoadConfigOrStop(options.config_path);
  SecureBytes pin = UserPin(options, config);
  SecureBytes passphrase;
  if (!options.file.empty()) passphrase = Passphrase(options);

  Cluster cluster(config, pin);
  if (!cluster.domain_value()) Refuse("no domain key is held by a majority of the members; nothing was backed up");
  std::vector<ArchiveToken> sources = ChooseMembers(cluster, options.member, false);
  replication::CollectedObjects collected = Transfer([&] {
    return replication::CollectObjects(sources, config.domain_key_label, {}, ProgressPrinter("reading"));
  });
  std::size_t left_out = ReportLeftOut(collected);
  Archive archive = MakeArchive(ArchiveKind::kArchive, config, options.member.empty() ? "cluster" : options.member,
                                *cluster.domain_value(), std::move(collected));
  if (!options.file.empty()) {
    WriteOrStop(options.file, archive, passphrase);
    std::cout << "backed up " << archive.records.size() << " objects of cluster \"" << config.cluster_label
              << "\" (domain " << CheckValueHex(archive.manifest.domain) << ") to " << options.file << "\n";
  } else {
    SecureBytes token_pin = TokenPin(options, config);
    OutsideToken backup(options.token, options.module, token_pin, config.domain_key_label, Timeout(config));
    RequireDomain(archive, backup.domain(), backup.name());
    std::vector<ArchiveToken> targets{backup.token()};
    if (!options.merge) RequireEmpty(targets, config.domain_key_label, "a backup to a token");
    replication::RestoreResult result = Transfer([&] {
      return replication::RestoreObjects(archive.records, targets, config.domain_key_label, ProgressPrinter("writing"));
    });
    CheckAgainstManifest(archive.manifest, targets, config.domain_key_label);
    std::cout << "backed up " << archive.records.size() << " objects of cluster \"" << config.cluster_label
              << "\" to " << options.token << ": " << result.created << " written, " << result.already_present
              << " already there\n";
  }
  if (left_out != 0) {
    std::cerr << "p11ha: the backup lacks " << left_out << " keys that cannot leave their member\n";
    return kExitProblem;
  }
  return kExitOk;
}

// ---- restore and import ----

// Writes `archive` to the cluster (or --member), after every refusal had its chance.
int Restore(const ArchiveOptions& options, const config::Config& config, Cluster& cluster, const Archive& archive,
            bool merge) {
  std::vector<ArchiveToken> targets = ChooseMembers(cluster, options.member, true);
  if (!cluster.domain_value()) Refuse("no domain key is held by a majority of the members; nothing was written");
  RequireDomain(archive, *cluster.domain_value(), "the cluster");
  if (!merge) RequireEmpty(targets, config.domain_key_label, "a restore");
  replication::RestoreResult result = Transfer([&] {
    return replication::RestoreObjects(archive.records, targets, config.domain_key_label, ProgressPrinter("restoring"));
  });
  std::size_t held = CheckAgainstManifest(archive.manifest, targets, config.domain_key_label);
  std::cout << (archive.manifest.kind == ArchiveKind::kPackage ? "imported " : "restored ") << archive.records.size()
            << " objects to " << targets.size() << (targets.size() == 1 ? " member: " : " members: ") << result.created << " written, "
            << result.already_present << " already there; every identity of the manifest is present ("
            << held << " objects on " << targets.front().token->name() << ")\n";
  return kExitOk;
}

void RequireKind(const Archive& archive, ArchiveKind kind, const std::string& path) {
  if (archive.manifest.kind == kind) return;
  Refuse(path + " is a " + std::string(replication::ArchiveKindName(archive.manifest.kind)) + ", not " +
         (kind == ArchiveKind::kArchive ? "an archive" : "a package") +
         (kind == ArchiveKind::kArchive ? "; use p11ha package import" : "; use p11ha archive restore"));
}

int RunRestore(const ArchiveOptions& options) {
  if (options.file.empty() == options.token.empty()) BadUsage("give either --from FILE or --from-token URI");
  if (!options.token.empty() && options.module.empty()) BadUsage("--from-token needs --module PATH");
  config::Config config = LoadConfigOrStop(options.config_path);
  SecureBytes pin = UserPin(options, config);
  if (!options.file.empty()) {
    // The seal is checked before a member is even contacted.
    Archive archive = OpenOrStop(options.file, Passphrase(options));
    RequireKind(archive, ArchiveKind::kArchive, options.file);
    Cluster cluster(config, pin);
    return Restore(options, config, cluster, archive, options.merge);
  }
  SecureBytes token_pin = TokenPin(options, config);
  OutsideToken backup(options.token, options.module, token_pin, config.domain_key_label, Timeout(config));
  replication::CollectedObjects collected = Transfer([&] {
    std::vector<ArchiveToken> sources{backup.token()};
    return replication::CollectObjects(sources, config.domain_key_label, {}, ProgressPrinter("reading"));
  });
  bool incomplete = ReportLeftOut(collected) != 0;
  Archive archive = MakeArchive(ArchiveKind::kArchive, config, options.token, backup.domain(), std::move(collected));
  Cluster cluster(config, pin);
  int code = Restore(options, config, cluster, archive, options.merge);
  return incomplete ? kExitProblem : code;
}

// ---- list and verify ----

int RunList(const ArchiveOptions& options, bool verify) {
  if (options.file.empty()) BadUsage("give --from FILE");
  Archive archive = OpenOrStop(options.file, Passphrase(options));
  const replication::ArchiveManifest& manifest = archive.manifest;
  std::cout << replication::ArchiveKindName(manifest.kind) << " of cluster \"" << manifest.cluster << "\" from "
            << manifest.source << ", made " << manifest.created << "\n"
            << "domain " << CheckValueHex(manifest.domain) << "\n"
            << manifest.identities.size() << " objects\n";
  if (!verify) {
    for (const replication::ArchiveRecord& record : archive.records) {
      std::cout << "  " << DescribeRecord(record) << "  " << replication::IdentityHex(record.identity).substr(0, 16)
                << "\n";
    }
    return kExitOk;
  }
  std::cout << options.file << ": sealed and intact; the manifest matches its " << archive.records.size()
            << " records\n";
  return kExitOk;
}

// ---- package ----

int RunExport(const ArchiveOptions& options) {
  if (options.match.empty()) BadUsage("give at least one --match SELECTOR");
  std::vector<ObjectSelector> selectors = ParseSelectors(options.match);
  RefuseExisting(options.file);
  config::Config config = LoadConfigOrStop(options.config_path);
  SecureBytes pin = UserPin(options, config);
  SecureBytes passphrase = Passphrase(options);
  Cluster cluster(config, pin);
  if (!cluster.domain_value()) Refuse("no domain key is held by a majority of the members; nothing was exported");
  std::vector<ArchiveToken> sources = ChooseMembers(cluster, options.member, false);
  std::vector<std::size_t> hits(selectors.size(), 0);
  replication::CollectedObjects collected = Transfer([&] {
    return replication::CollectObjects(
        sources, config.domain_key_label,
        [&](const replication::ObjectSummary& summary) { return MatchAny(selectors, summary, hits); },
        ProgressPrinter("reading"));
  });
  for (std::size_t i = 0; i < selectors.size(); ++i)
    if (hits[i] == 0) Refuse("--match " + selectors[i].text + " matches no object; nothing was written");
  if (ReportLeftOut(collected) != 0) Refuse("some matching keys cannot leave their member; nothing was written");
  Archive archive = MakeArchive(ArchiveKind::kPackage, config, options.member.empty() ? "cluster" : options.member,
                                *cluster.domain_value(), std::move(collected));
  WriteOrStop(options.file, archive, passphrase);
  std::cout << "exported " << archive.records.size() << " objects to " << options.file << ":\n";
  for (const replication::ArchiveRecord& record : archive.records) std::cout << "  " << DescribeRecord(record) << "\n";
  return kExitOk;
}

int RunImport(const ArchiveOptions& options) {
  config::Config config = LoadConfigOrStop(options.config_path);
  SecureBytes pin = UserPin(options, config);
  Archive archive = OpenOrStop(options.file, Passphrase(options));
  RequireKind(archive, ArchiveKind::kPackage, options.file);
  Cluster cluster(config, pin);
  return Restore(options, config, cluster, archive, true);
}

// ---- registration ----

void AddCommon(CLI::App& verb, ArchiveOptions& options) {
  AddConfigOption(verb, options.config_path);
  verb.add_option("--pin-file", options.pin_file, "The members' user PIN (else [auth] pin_file, else a prompt)")
      ->type_name("FILE");
}

void AddPassphrase(CLI::App& verb, ArchiveOptions& options) {
  verb.add_option("--passphrase-file", options.passphrase_file, "The archive passphrase (else a prompt)")
      ->type_name("FILE");
}

void AddToken(CLI::App& verb, ArchiveOptions& options, const char* flag, const char* help) {
  verb.add_option(flag, options.token, help)->type_name("URI");
  verb.add_option("--module", options.module, "The PKCS#11 module of the backup token")->type_name("PATH");
  verb.add_option("--token-pin-file", options.token_pin_file, "The backup token's user PIN (default: the cluster's)")
      ->type_name("FILE");
}

Runner Guarded(std::function<int()> run) {
  return [run] {
    try {
      return run();
    } catch (const Stop& stop) {
      std::cerr << "p11ha: " << OneLine(stop.message) << "\n";
      return stop.code;
    }
  };
}

constexpr const char* kExitFooter =
    "Exit status: 0 on success, 1 when refused for safety or when the check found a problem (a\n"
    "tampered file, a wrong passphrase, another domain, a non-empty target, a failed copy: then\n"
    "nothing is left written), 2 on bad usage or config.";

}  // namespace

Runner RegisterArchive(CLI::App& sub) {
  auto options = std::make_shared<ArchiveOptions>();
  sub.require_subcommand(1, 1);
  sub.footer(kExitFooter);

  CLI::App* backup = sub.add_subcommand("backup", "Back up every token object to a sealed file or a backup token");
  AddCommon(*backup, *options);
  backup->add_option("--to", options->file, "The archive file to write (never overwritten)")->type_name("FILE");
  AddPassphrase(*backup, *options);
  AddToken(*backup, *options, "--to-token", "A backup token of the same domain, instead of a file");
  backup->add_option("--member", options->member, "Back up this member only")->type_name("NAME");
  backup->add_flag("--merge", options->merge, "With --to-token: keep what the backup token already holds");
  backup->footer(kExitFooter);

  CLI::App* restore = sub.add_subcommand("restore", "Restore an archive or a backup token into the cluster");
  AddCommon(*restore, *options);
  restore->add_option("--from", options->file, "The archive file")->type_name("FILE");
  AddPassphrase(*restore, *options);
  AddToken(*restore, *options, "--from-token", "A backup token, instead of a file");
  restore->add_option("--member", options->member, "Restore into this member only")->type_name("NAME");
  restore->add_flag("--merge", options->merge, "Restore into members that already hold objects, adding what they lack");
  restore->footer(kExitFooter);

  CLI::App* list = sub.add_subcommand("list", "Show an archive's manifest and objects without restoring it");
  list->add_option("--from", options->file, "The archive file")->required()->type_name("FILE");
  AddPassphrase(*list, *options);
  CLI::App* verify = sub.add_subcommand("verify", "Check an archive's seal and manifest without restoring it");
  verify->add_option("--from", options->file, "The archive file")->required()->type_name("FILE");
  AddPassphrase(*verify, *options);

  return Guarded([options, backup, restore, verify] {
    if (backup->parsed()) return RunBackup(*options);
    if (restore->parsed()) return RunRestore(*options);
    return RunList(*options, verify->parsed());
  });
}

Runner RegisterPackage(CLI::App& sub) {
  auto options = std::make_shared<ArchiveOptions>();
  sub.require_subcommand(1, 1);
  sub.footer(kExitFooter);

  CLI::App* exporter = sub.add_subcommand("export", "Write chosen keys and objects to a sealed package");
  AddCommon(*exporter, *options);
  exporter->add_option("--match", options->match, "label=NAME, id=HEX or a PKCS#11 URI (pkcs11:object=...); repeat")
      ->type_name("SELECTOR")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  exporter->add_option("--to", options->file, "The package file to write (never overwritten)")
      ->required()
      ->type_name("FILE");
  AddPassphrase(*exporter, *options);
  exporter->add_option("--member", options->member, "Read from this member only")->type_name("NAME");
  exporter->footer(kExitFooter);

  CLI::App* importer = sub.add_subcommand("import", "Add a package's objects to every member of this cluster");
  AddCommon(*importer, *options);
  importer->add_option("--from", options->file, "The package file")->required()->type_name("FILE");
  AddPassphrase(*importer, *options);
  importer->add_option("--member", options->member, "Import into this member only")->type_name("NAME");
  importer->footer(kExitFooter);

  return Guarded([options, exporter] { return exporter->parsed() ? RunExport(*options) : RunImport(*options); });
}

}  // namespace p11ha::cli
