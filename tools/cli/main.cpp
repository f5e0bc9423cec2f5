// SPDX-License-Identifier: Apache-2.0
// p11ha: the admin CLI. Each verb lives in its own file and registers itself from kCommands.
#include <CLI/CLI.hpp>

#include <iostream>
#include <vector>

#include "config/config.h"
#include "tools/cli/command.h"

namespace p11ha::cli {
namespace {

// Every verb of DESIGN.md's CLI.
const Command kCommands[] = {
    {"status", "Connect to every member and report its state, token, latency and objects", &RegisterStatus},
    {"domain", "Create the replication domain key, or install it on a member from custodian shares",
     &RegisterDomain},
    {"verify", "Compare every member's objects and report drift; changes nothing", &RegisterVerify},
    {"sync", "Repair drift between members: copy missing objects, apply deletions, drop duplicates",
     &RegisterSync},
    {"member", "Check a configured member before it serves, or add it: copy the cluster's objects to it",
     &RegisterMember},
    {"archive", "Back up the cluster's objects to a sealed file or a backup token, restore, list, verify",
     &RegisterArchive},
    {"package", "Move chosen keys between clusters of one domain in a sealed file", &RegisterPackage},
};

}  // namespace

void AddConfigOption(CLI::App& sub, std::string& path) {
  sub.add_option("--config", path, "Cluster config (default: $P11HA_CONFIG, else /etc/p11ha/p11ha.toml)")
      ->type_name("FILE");
}

std::string OneLine(std::string text) {
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text;
}

std::string ConfigPathOrDefault(const std::string& path) {
  return path.empty() ? config::DefaultConfigPath() : path;
}

int Main(int argc, char** argv) {
  CLI::App app("Checks and administers a p11ha cluster of PKCS#11 members.", "p11ha");
  app.set_version_flag("--version", std::string("p11ha ") + P11HA_VERSION, "Print the version and exit");
  app.require_subcommand(1, 1);

  std::vector<std::pair<CLI::App*, Runner>> verbs;
  for (const Command& command : kCommands) {
    CLI::App* sub = app.add_subcommand(command.name, command.summary);
    verbs.emplace_back(sub, command.Register(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every real parse error is bad usage (2), not CLI11's codes.
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  for (auto& [sub, run] : verbs)
    if (sub->parsed()) return run();
  return kExitUsage;
}

}  // namespace p11ha::cli

int main(int argc, char** argv) {
  try {
    return p11ha::cli::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "p11ha: " << e.what() << "\n";
    return p11ha::cli::kExitProblem;
  }
}
