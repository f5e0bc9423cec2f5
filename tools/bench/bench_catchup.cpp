// SPDX-License-Identifier: Apache-2.0
// `catchup`: how long a returning member takes to receive N keys it missed, against the floor of
// the same N unwraps done directly on a token. The catch-up is `p11ha sync`, the reconciler the
// module itself runs when a member returns (replication/reconciler.h, `rejoining`); its run
// includes everything a returning member costs: listing and fingerprinting both members, the
// wrap on the source, the unwrap and the verifying re-wrap on the target.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "bench_module.h"
#include "raw_token_session.h"
#include "replication/object_copy.h"

namespace p11ha::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kClusterLabel = "ha-bench";

struct CatchupOptions {
  int keys = 1000;
  int rounds = 3;
  std::string softhsm = kSoftHsmModule;
  std::string p11ha = P11HA_MODULE_PATH;
  std::string cli = P11HA_CLI_PATH;
  std::string out;
};

struct RoundFigures {
  double make_s = 0, catchup_s = 0, again_s = 0, floor_s = 0;
  long copied = 0;
};

// The lines of a `p11ha sync` report that say a missing key was copied.
long CountCopies(const std::string& sync_output) {
  long copies = 0;
  std::istringstream in(sync_output);
  for (std::string line; std::getline(in, line);)
    if (line.find("missing:") != std::string::npos && line.find(": done") != std::string::npos) ++copies;
  return copies;
}

RoundFigures CatchupRound(const CatchupOptions& options, const std::string& self, const fs::path& dir, int round) {
  // A and B in one farm; C, the floor's target, in another, so that neither measured process
  // loads (at SoftHSM's C_Initialize) the keys the other one writes.
  const Farm main = MakeFarm(dir / "main");
  const Farm floor = MakeFarm(dir / "floor");
  InitToken(main, "a");
  InitToken(main, "b");
  InitToken(floor, "c");
  const fs::path conf_ab = dir / "p11ha-ab.toml", conf_a = dir / "p11ha-a.toml", conf_c = dir / "p11ha-c.toml";
  WriteConfig(conf_ab, kClusterLabel, {{"hsm-a", "a"}, {"hsm-b", "b"}}, options.softhsm, dir / "p11ha.log");
  WriteConfig(conf_a, kClusterLabel, {{"hsm-a", "a"}}, options.softhsm, dir / "p11ha.log");
  WriteConfig(conf_c, kClusterLabel, {{"hsm-c", "c"}}, options.softhsm, dir / "p11ha.log");
  CreateDomain(options.cli, main, conf_ab, dir / "shares");
  Run({options.cli, "domain", "install", "--member", "hsm-c", "--share", (dir / "shares" / "share-1").string(),
       "--so-pin-file", floor.so_pin_file.string(), "--pin-file", floor.pin_file.string(), "--config",
       conf_c.string()},
      floor.env());

  RoundFigures figures;
  // Born through p11ha while B is not configured: wrappable keys that B misses.
  Env only_a = main.env();
  only_a["P11HA_CONFIG"] = conf_a.string();
  auto made = ParseLine(Run({self, "catchup-make", "--module", options.p11ha, "--token", kClusterLabel, "--pin-file",
                             main.pin_file.string(), "--keys", std::to_string(options.keys)},
                            only_a));
  figures.make_s = std::stod(Field(made, "seconds"));

  const std::vector<std::string> sync = {options.cli, "sync", "--config", conf_ab.string(), "--pin-file",
                                         main.pin_file.string()};
  auto catch_up = [&] {
    std::string output;
    figures.catchup_s = RunTimed(sync, main.env(), &output);
    figures.copied = CountCopies(output);
    if (figures.copied != options.keys)
      throw std::runtime_error("p11ha sync copied " + std::to_string(figures.copied) + " keys, not " +
                               std::to_string(options.keys));
    // What is left once nothing is missing: listing and fingerprinting both members.
    figures.again_s = RunTimed(sync, main.env());
  };
  auto floor_run = [&] {
    const fs::path blobs = dir / "wrapped.txt";
    Run({self, "catchup-wrap", "--module", options.softhsm, "--token", "a", "--pin-file", main.pin_file.string(),
         "--out", blobs.string()},
        main.env());
    auto fields = ParseLine(Run({self, "catchup-unwrap", "--module", options.softhsm, "--token", "c", "--pin-file",
                                 floor.pin_file.string(), "--in", blobs.string()},
                                floor.env()));
    if (std::stol(Field(fields, "keys")) != options.keys)
      throw std::runtime_error("the floor unwrapped " + Field(fields, "keys") + " keys");
    figures.floor_s = std::stod(Field(fields, "seconds"));
  };
  // Alternating the order spreads the machine's drift over both.
  if (round % 2 == 0) {
    catch_up();
    floor_run();
  } else {
    floor_run();
    catch_up();
  }
  return figures;
}

int Catchup(const CatchupOptions& options, const std::string& self) {
  std::vector<RoundFigures> rounds;
  for (int round = 0; round < options.rounds; ++round) {
    TempDir dir;  // fresh tokens per round: B must miss exactly these N keys
    rounds.push_back(CatchupRound(options, self, dir.path(), round));
    std::cerr << "p11ha-bench: catch-up round " << round + 1 << "/" << options.rounds << ": sync "
              << Fixed(rounds.back().catchup_s, 2) << " s, floor " << Fixed(rounds.back().floor_s, 2) << " s\n";
  }
  std::ostringstream report;
  report << "| round | keys copied | catch-up: `p11ha sync` (s) | floor: " << options.keys
         << " unwraps (s) | ratio | `p11ha sync` again, nothing to copy (s) | making the keys through p11ha (s) |\n"
         << "|---|---|---|---|---|---|---|\n";
  std::vector<double> catchup, floor, ratio, again;
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    const RoundFigures& r = rounds[i];
    catchup.push_back(r.catchup_s);
    floor.push_back(r.floor_s);
    ratio.push_back(r.catchup_s / r.floor_s);
    again.push_back(r.again_s);
    report << "| " << i + 1 << " | " << r.copied << " | " << Fixed(r.catchup_s, 3) << " | " << Fixed(r.floor_s, 3)
           << " | " << Fixed(ratio.back(), 3) << " | " << Fixed(r.again_s, 3) << " | " << Fixed(r.make_s, 3) << " |\n";
  }
  const double median_ratio = Median(ratio);
  report << "| **median** | | **" << Fixed(Median(catchup), 3) << "** | **" << Fixed(Median(floor), 3) << "** | **"
         << Fixed(median_ratio, 3) << "** | " << Fixed(Median(again), 3) << " | |\n"
         << "\nTarget: catch-up ≤ 1.3 × the floor: " << (median_ratio <= 1.3 ? "met" : "**not met**")
         << " (median of per-round ratios).\n"
         << "\nPer round, fresh tokens: A and B hold the same domain key (`p11ha domain create`), and " << options.keys
         << " AES-256 token keys are made through p11ha with A as its only member, so B misses them. Catch-up: "
            "`p11ha sync` over A and B, timed by wall clock as a whole process (start, login, listing and "
            "fingerprinting both members, the copies by C_WrapKey on A, C_UnwrapKey and a verifying re-wrap on B, "
            "then its checking pass). It is the reconciler the module runs when a member returns "
            "(`rejoining`), there without the process start and with only the returning member written. Floor: "
            "the same keys wrapped on A under the domain key (untimed), then only the "
         << options.keys
         << " C_UnwrapKey calls, with the template replication uses, timed in one process directly on a third "
            "token C in a SoftHSM token directory of its own. Rounds alternate which of the two runs first.\n";
  Emit(report.str(), options.out);
  return 0;
}

// ---- the measured side ----

struct Session {
  Module module;
  CK_SESSION_HANDLE handle;
  Session(const std::string& path, const std::string& token, const std::string& pin_file)
      : module(path), handle(OpenSession(module, module.SlotOf(token))) {
    Login(module, handle, ReadPin(pin_file));
  }
};

int MakeKeys(const std::string& path, const std::string& token, const std::string& pin_file, int keys) {
  Session s(path, token, pin_file);
  CK_BBOOL yes = CK_TRUE;
  CK_ULONG length = 32;
  const auto start = Clock::now();
  for (int i = 0; i < keys; ++i) {
    const std::string label = "bench-catchup-" + std::to_string(i);
    CK_ATTRIBUTE key_t[] = {{CKA_TOKEN, &yes, 1},   {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                            {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_VALUE_LEN, &length, sizeof length},
                            LabelAttribute(label)};
    CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    Module::Check(s.module->C_GenerateKey(s.handle, &mechanism, key_t, 7, &key), "C_GenerateKey");
  }
  std::cout << "seconds=" << Fixed(std::chrono::duration<double>(Clock::now() - start).count(), 6) << "\n";
  return 0;
}

std::string HexOf(const std::vector<CK_BYTE>& bytes) {
  std::string text;
  char pair[3];
  for (CK_BYTE byte : bytes) {
    std::snprintf(pair, sizeof pair, "%02x", byte);
    text += pair;
  }
  return text.empty() ? "-" : text;
}

std::vector<CK_BYTE> BytesOf(const std::string& hex) {
  std::vector<CK_BYTE> bytes;
  if (hex == "-") return bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<CK_BYTE>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  return bytes;
}

// One line per secret key on the token but the domain key: the wrapped blob, then the unwrap
// template as TYPE:VALUE pairs, all in hex.
int WrapKeys(const std::string& path, const std::string& token, const std::string& pin_file, const std::string& out) {
  Session s(path, token, pin_file);
  const CK_OBJECT_HANDLE domain_key = FindDomainKey(s.module, s.handle);
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  RawTokenSession source(s.module, s.handle, "source");
  std::ofstream file(out);
  for (CK_OBJECT_HANDLE key : FindAll(s.module, s.handle, {{CKA_CLASS, &secret, sizeof secret}})) {
    if (key == domain_key) continue;
    const replication::CopyPlan plan = replication::PrepareCopy(source, key, domain_key);
    file << HexOf(plan.wrapped);
    for (const replication::Attribute& attribute : plan.attributes)
      file << " " << std::hex << attribute.type << std::dec << ":" << HexOf(attribute.value);
    file << "\n";
  }
  if (!file) throw std::runtime_error("cannot write " + out);
  return 0;
}

int UnwrapKeys(const std::string& path, const std::string& token, const std::string& pin_file, const std::string& in) {
  struct Blob {
    std::vector<CK_BYTE> wrapped;
    replication::AttributeList attributes;
  };
  std::vector<Blob> blobs;
  std::ifstream file(in);
  for (std::string line; std::getline(file, line);) {
    std::istringstream fields(line);
    std::string item;
    Blob blob;
    fields >> item;
    blob.wrapped = BytesOf(item);
    while (fields >> item) {
      const auto colon = item.find(':');
      blob.attributes.push_back({std::stoul(item.substr(0, colon), nullptr, 16), BytesOf(item.substr(colon + 1))});
    }
    blobs.push_back(std::move(blob));
  }
  Session s(path, token, pin_file);
  const CK_OBJECT_HANDLE domain_key = FindDomainKey(s.module, s.handle);
  std::vector<std::vector<CK_ATTRIBUTE>> templates;
  for (Blob& blob : blobs) templates.push_back(replication::AsTemplate(blob.attributes));
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  const auto start = Clock::now();
  for (std::size_t i = 0; i < blobs.size(); ++i) {
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    Module::Check(s.module->C_UnwrapKey(s.handle, &mechanism, domain_key, blobs[i].wrapped.data(),
                                        blobs[i].wrapped.size(), templates[i].data(), templates[i].size(), &key),
                  "C_UnwrapKey");
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << "keys=" << blobs.size() << " seconds=" << Fixed(seconds, 6) << "\n";
  return 0;
}

}  // namespace

void RegisterCatchup(CLI::App& app, Commands& commands) {
  auto options = std::make_shared<CatchupOptions>();
  auto* cmd = app.add_subcommand("catchup", "a returning member receiving N missed keys against N direct unwraps");
  cmd->add_option("--keys", options->keys, "keys the returning member missed")->check(CLI::Range(1, 1000000));
  cmd->add_option("--rounds", options->rounds, "rounds, each on fresh tokens")->check(CLI::Range(1, 99));
  cmd->add_option("--softhsm", options->softhsm, "SoftHSM's module");
  cmd->add_option("--p11ha", options->p11ha, "libp11ha.so");
  cmd->add_option("--cli", options->cli, "the p11ha CLI (domain key, sync)");
  cmd->add_option("--out", options->out, "also write the table here");
  commands.emplace_back(cmd, [options](const std::string& self) { return Catchup(*options, self); });

  struct RunOptions {
    std::string module, token, pin_file, file;
    int keys = 0;
  };
  auto run = std::make_shared<RunOptions>();
  auto add_common = [&run](CLI::App* sub) {
    sub->add_option("--module", run->module)->required();
    sub->add_option("--token", run->token)->required();
    sub->add_option("--pin-file", run->pin_file)->required();
  };
  auto* make_cmd = app.add_subcommand("catchup-make", "make AES-256 token keys (used by catchup)");
  add_common(make_cmd);
  make_cmd->add_option("--keys", run->keys)->required()->check(CLI::Range(1, 1000000));
  commands.emplace_back(make_cmd, [run](const std::string&) {
    return MakeKeys(run->module, run->token, run->pin_file, run->keys);
  });
  auto* wrap_cmd = app.add_subcommand("catchup-wrap", "wrap every secret key under the domain key (used by catchup)");
  add_common(wrap_cmd);
  wrap_cmd->add_option("--out", run->file)->required();
  commands.emplace_back(wrap_cmd, [run](const std::string&) {
    return WrapKeys(run->module, run->token, run->pin_file, run->file);
  });
  auto* unwrap_cmd = app.add_subcommand("catchup-unwrap", "unwrap catchup-wrap's keys, timed (used by catchup)");
  add_common(unwrap_cmd);
  unwrap_cmd->add_option("--in", run->file)->required();
  commands.emplace_back(unwrap_cmd, [run](const std::string&) {
    return UnwrapKeys(run->module, run->token, run->pin_file, run->file);
  });
}

}  // namespace p11ha::bench
