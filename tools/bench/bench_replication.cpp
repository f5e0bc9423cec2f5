// SPDX-License-Identifier: Apache-2.0
// `replication`: how long C_GenerateKeyPair of an EC P-256 token key pair takes through p11ha
// with 1, 2 and 3 SoftHSM members, where the call returns only once the quorum of members holds
// the pair (DESIGN.md "Replication"), against the same pair generated directly on one token, and
// against a floor: the pair generated on one token and copied to two others by replication's own
// recipe, directly on SoftHSM, both copies at once.
#include <chrono>
#include <exception>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "bench_module.h"
#include "provider/member/call_executor.h"
#include "raw_token_session.h"
#include "replication/object_copy.h"

namespace p11ha::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kClusterLabel = "ha-bench";
constexpr const char* kDirectLabel = "direct";

struct ReplicationOptions {
  int rounds = 5;
  int keys = 20;
  // SoftHSM looks at every object file of a token on each call, so a token that grew over the
  // run would slow whatever runs later on it: by default each run destroys its pairs, untimed.
  bool keep_keys = false;
  std::string softhsm = kSoftHsmModule;
  std::string p11ha = P11HA_MODULE_PATH;
  std::string cli = P11HA_CLI_PATH;
  std::string out;
};

// One way of generating the pair: directly on a token (members == 0), through p11ha, or a
// floor (`floor_copies` > 0): born on r1 and copied directly to r2, or to r2 and r3.
struct Setup {
  std::string name;
  int members = 0;
  fs::path config;
  int floor_copies = 0;
  bool floor_workers = false;  // each token's part as one call through p11ha's call executor
};

// What one measured run (a process of its own) is told.
struct RunOptions {
  std::string module, token, pin_file, label;
  int keys = 20;
  bool destroy = false;
  int copies = 2;        // the floor's
  bool workers = false;  // the floor's
};

struct Figures {
  std::vector<double> all_ms;           // every timed call of every round
  std::vector<double> round_median_ms;  // one per round
  std::vector<double> first_ms;         // the untimed warm-up call of each run
};

void Generate(const std::string& self, const ReplicationOptions& options, const Farm& farm, const Setup& setup,
              int round, Figures& figures) {
  Env env = farm.env();
  if (setup.members > 0) env["P11HA_CONFIG"] = setup.config.string();
  const bool floor = setup.floor_copies > 0;
  std::vector<std::string> argv = {self,
                                   floor ? "keygen-floor-run" : "keygen-run",
                                   "--module",
                                   setup.members > 0 ? options.p11ha : options.softhsm,
                                   "--token",
                                   setup.members > 0 ? kClusterLabel : floor ? "r1" : kDirectLabel,
                                   "--pin-file",
                                   farm.pin_file.string(),
                                   "--keys",
                                   std::to_string(options.keys),
                                   "--label",
                                   "bench-repl-" + std::to_string(round) + "-" + std::to_string(setup.members) + "-" +
                                       std::to_string(setup.floor_copies)};
  if (floor) argv.insert(argv.end(), {"--copies", std::to_string(setup.floor_copies)});
  if (setup.floor_workers) argv.push_back("--workers");
  if (!options.keep_keys) argv.push_back("--destroy");
  auto fields = ParseLine(Run(argv, env));
  std::vector<double> calls = ParseList(Field(fields, "latencies_us"));
  for (double& us : calls) us /= 1000;
  figures.all_ms.insert(figures.all_ms.end(), calls.begin(), calls.end());
  figures.round_median_ms.push_back(Median(calls));
  figures.first_ms.push_back(std::stod(Field(fields, "first_us")) / 1000);
}

std::string Verdict(double ratio, double target) { return ratio <= target ? "met" : "**not met**"; }

int Replication(const ReplicationOptions& options, const std::string& self) {
  TempDir dir;
  const Farm farm = MakeFarm(dir.path());
  // One token per member, all in one token directory as one SoftHSM installation serves them,
  // and one more for the direct reference. Every process, direct or not, loads all four.
  for (const char* label : {"r1", "r2", "r3", kDirectLabel}) InitToken(farm, label);
  std::vector<Setup> setups = {{"direct SoftHSM (one token)", 0, {}}};
  std::vector<MemberSpec> members;
  for (int n = 1; n <= 3; ++n) {
    members.push_back({"hsm-" + std::to_string(n), "r" + std::to_string(n)});
    const fs::path config = dir.path() / ("p11ha-" + std::to_string(n) + ".toml");
    WriteConfig(config, kClusterLabel, members, options.softhsm, dir.path() / "p11ha.log");
    setups.push_back({"p11ha, " + std::to_string(n) + (n == 1 ? " member" : " members"), n, config});
  }
  // Over the 3-member config, so that the 1- and 2-member clusters, its subsets, share its key.
  CreateDomain(options.cli, farm, setups.back().config, dir.path() / "shares");
  setups.push_back({"floor: born on one token, copied to two directly, at once", 0, {}, 2});
  setups.push_back({"floor: born on one token, copied to one directly", 0, {}, 1});
  setups.push_back({"floor with call workers: the two-copy floor, each token's part one call through p11ha's call "
                    "executor",
                    0, {}, 2, true});

  std::vector<Figures> figures(setups.size());
  for (int round = 0; round < options.rounds; ++round) {
    // Alternating the order spreads the machine's drift over every configuration.
    for (std::size_t k = 0; k < setups.size(); ++k) {
      const std::size_t i = round % 2 == 0 ? k : setups.size() - 1 - k;
      Generate(self, options, farm, setups[i], round, figures[i]);
    }
    std::cerr << "p11ha-bench: replication round " << round + 1 << "/" << options.rounds << " done\n";
  }

  std::ostringstream report;
  report << "| configuration | timed calls | p50: median of all calls (ms) | median of round medians (ms) | p90 (ms) "
            "| first call of a run, median (ms) |\n"
         << "|---|---|---|---|---|---|\n";
  for (std::size_t i = 0; i < setups.size(); ++i) {
    const Figures& f = figures[i];
    report << "| " << setups[i].name << " | " << f.all_ms.size() << " | " << Fixed(Median(f.all_ms), 2) << " | "
           << Fixed(Median(f.round_median_ms), 2) << " | " << Fixed(Percentile(f.all_ms, 0.9), 2) << " | "
           << Fixed(Median(f.first_ms), 2) << " |\n";
  }
  struct RatioRow {
    const char* name;
    std::size_t over, under;
    double target;  // 0: no target
  };
  const RatioRow rows[] = {{"1 member / direct", 1, 0, 0},
                           {"2 members / 1 member", 2, 1, 0},
                           {"3 members / 2 members", 3, 2, 1.15},
                           {"3 members / direct", 3, 0, 2.5},
                           {"floor / direct", 4, 0, 0},
                           {"3 members / floor", 3, 4, 0},
                           {"floor, two copies / floor, one copy", 4, 5, 0},
                           {"2 members / floor, one copy", 2, 5, 0},
                           {"floor with call workers / floor", 6, 4, 0},
                           {"3 members / floor with call workers", 3, 6, 0}};
  report << "\n| ratio | of the medians of all calls | median of per-round ratios | target |\n|---|---|---|---|\n";
  for (const RatioRow& row : rows) {
    const double pooled = Median(figures[row.over].all_ms) / Median(figures[row.under].all_ms);
    std::vector<double> per_round;
    for (int round = 0; round < options.rounds; ++round)
      per_round.push_back(figures[row.over].round_median_ms[round] / figures[row.under].round_median_ms[round]);
    report << "| " << row.name << " | " << Fixed(pooled, 3) << " | " << Fixed(Median(per_round), 3) << " | "
           << (row.target > 0 ? "≤ " + Fixed(row.target, 2) + ": " + Verdict(pooled, row.target) : "—") << " |\n";
  }
  report << "\nC_GenerateKeyPair, EC P-256, both halves token objects (private half CKA_PRIVATE and CKA_SENSITIVE), "
            "one labelled pair per call; "
         << options.rounds << " rounds, each a fresh process per configuration generating " << options.keys
         << " pairs serially after one untimed warm-up pair, configurations in alternating order. p11ha: members are "
            "separate SoftHSM tokens of one token directory, default quorum (majority), domain key staged with "
            "`p11ha domain create`. "
         << (options.keep_keys ? "Pairs were kept, so the member tokens grew over the run."
                               : "Each run destroyed its pairs afterwards (untimed, through the same module), so "
                                 "every run starts from the same tokens.")
         << " The floor generates each pair on r1 with the attributes p11ha adds (CKA_EXTRACTABLE, "
            "CKA_WRAP_WITH_TRUSTED), then makes the copies as p11ha does (replication's PrepareCopy on r1, "
            "ApplyCopy on r2 and r3, one thread each), straight on SoftHSM over sessions opened once; the "
            "one-copy floor copies to r2 only, on the generating thread. The floor with call workers runs the "
            "two-copy floor's parts as p11ha must, to give up on a member after its call timeout: the generation "
            "and the copy plans as one call on r1's call executor, each target's copies as one call on its own. "
            "The verdicts use the medians of all calls.\n";
  Emit(report.str(), options.out);
  return 0;
}

// One labelled EC P-256 token pair; `wrappable` adds what p11ha adds to a private half so that
// the domain key can copy it.
void GeneratePair(Module& m, CK_SESSION_HANDLE session, const std::string& label, bool wrappable,
                  CK_OBJECT_HANDLE& pub, CK_OBJECT_HANDLE& priv) {
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1},
                          {CKA_VERIFY, &yes, 1},
                          {CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256), sizeof kP256},
                          LabelAttribute(label)};
  CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1},     {CKA_PRIVATE, &yes, 1},       {CKA_SENSITIVE, &yes, 1},
                           {CKA_SIGN, &yes, 1},      LabelAttribute(label),        {CKA_EXTRACTABLE, &yes, 1},
                           {CKA_WRAP_WITH_TRUSTED, &yes, 1}};
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  Module::Check(m->C_GenerateKeyPair(session, &mechanism, pub_t, 4, priv_t, wrappable ? 7 : 5, &pub, &priv),
                "C_GenerateKeyPair");
}

// Times `keys` calls of `generate` after one untimed warm-up, and prints what Generate() parses.
template <typename Generate>
void ReportRun(int keys, const Generate& generate) {
  // The first call of a process also opens member sessions and finds the domain key.
  const double first_us = generate(0);
  std::vector<double> latencies;
  for (int i = 1; i <= keys; ++i) latencies.push_back(generate(i));
  std::cout << "first_us=" << Fixed(first_us, 1) << " latencies_us=" << Join(latencies, 1) << "\n";
}

// The measured side: `keys` pairs one after the other, each call timed alone.
int KeygenRun(const RunOptions& run) {
  Module m(run.module);
  const CK_SESSION_HANDLE session = OpenSession(m, m.SlotOf(run.token));
  Login(m, session, ReadPin(run.pin_file));
  std::vector<CK_OBJECT_HANDLE> made;
  auto generate = [&](int i) {
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    const auto before = Clock::now();
    GeneratePair(m, session, run.label + "-" + std::to_string(i), /*wrappable=*/false, pub, priv);
    const auto after = Clock::now();
    made.push_back(pub);
    made.push_back(priv);
    return std::chrono::duration<double, std::micro>(after - before).count();
  };
  ReportRun(run.keys, generate);
  if (run.destroy)
    for (CK_OBJECT_HANDLE object : made) Module::Check(m->C_DestroyObject(session, object), "C_DestroyObject");
  m->C_CloseSession(session);
  return 0;
}

// Runs `work` as one call on a call worker of `executor`, as p11ha runs a member's part of a key
// birth. The bench gives up (throws) on a call past the timeout, which SoftHSM never reaches.
void OnWorker(CallExecutor& executor, const char* site, const std::function<void()>& work) {
  struct State {
    std::function<void()> work;
    std::exception_ptr failed;
  };
  auto state = std::make_shared<State>(State{work, nullptr});
  const auto answer = executor.Run(CallJob::Owning(state,
                                                   [](State& owned) {
                                                     try {
                                                       owned.work();
                                                     } catch (...) {
                                                       owned.failed = std::current_exception();
                                                     }
                                                     return CK_RV{CKR_OK};
                                                   }),
                                   nullptr, std::nullopt, site);
  if (!answer) throw std::runtime_error("a floor call did not answer within the call timeout");
  if (state->failed) std::rethrow_exception(state->failed);
}

// The floor's measured side: each pair born on --token, then copied to r2 (and r3 at once, on a
// second thread, as p11ha copies to its last target on the calling thread).
int KeygenFloorRun(const RunOptions& run) {
  Module m(run.module);
  const std::string pin = ReadPin(run.pin_file);
  struct Token {
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
    std::unique_ptr<RawTokenSession> raw;
    std::vector<CK_OBJECT_HANDLE> made;
    std::unique_ptr<CallExecutor> executor;  // with --workers
  };
  auto open = [&](const std::string& label) {
    Token token;
    if (run.workers) token.executor = std::make_unique<CallExecutor>(std::chrono::milliseconds(2000));
    token.session = OpenSession(m, m.SlotOf(label));
    Login(m, token.session, pin);
    token.domain_key = FindDomainKey(m, token.session);
    token.raw = std::make_unique<RawTokenSession>(m, token.session, label);
    return token;
  };
  Token source = open(run.token);
  std::vector<Token> targets;
  targets.push_back(open("r2"));
  if (run.copies == 2) targets.push_back(open("r3"));
  auto copy_to = [](Token& target, const std::vector<replication::CopyPlan>& plans) {
    for (const replication::CopyPlan& plan : plans)
      target.made.push_back(replication::ApplyCopy(plan, *target.raw, target.domain_key));
  };
  static const char kSourceSite[] = "C_GenerateKeyPair";
  static const char kTargetSite[] = "C_UnwrapKey (copies of new objects)";
  auto part = [](Token& token, const char* site, const std::function<void()>& work) {
    if (token.executor) OnWorker(*token.executor, site, work);
    else work();
  };
  auto generate = [&](int i) {
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    std::vector<replication::CopyPlan> plans;
    const auto before = Clock::now();
    part(source, kSourceSite, [&] {
      GeneratePair(m, source.session, run.label + "-" + std::to_string(i), /*wrappable=*/true, pub, priv);
      plans = {replication::PrepareCopy(*source.raw, pub, source.domain_key, CKO_PUBLIC_KEY),
               replication::PrepareCopy(*source.raw, priv, source.domain_key, CKO_PRIVATE_KEY)};
    });
    std::exception_ptr failed;
    std::thread second;
    if (targets.size() == 2)
      second = std::thread([&] {
        try {
          part(targets[1], kTargetSite, [&] { copy_to(targets[1], plans); });
        } catch (...) {
          failed = std::current_exception();
        }
      });
    try {
      part(targets[0], kTargetSite, [&] { copy_to(targets[0], plans); });
    } catch (...) {
      if (second.joinable()) second.join();
      throw;
    }
    if (second.joinable()) second.join();
    if (failed) std::rethrow_exception(failed);
    const auto after = Clock::now();
    source.made.push_back(pub);
    source.made.push_back(priv);
    return std::chrono::duration<double, std::micro>(after - before).count();
  };
  ReportRun(run.keys, generate);
  targets.push_back(std::move(source));
  for (Token& token : targets) {
    if (run.destroy)
      for (CK_OBJECT_HANDLE object : token.made)
        Module::Check(m->C_DestroyObject(token.session, object), "C_DestroyObject");
    m->C_CloseSession(token.session);
  }
  return 0;
}

}  // namespace

void RegisterReplication(CLI::App& app, Commands& commands) {
  auto options = std::make_shared<ReplicationOptions>();
  auto* cmd = app.add_subcommand(
      "replication", "EC P-256 key pair generation through p11ha with 1, 2, 3 members against one token directly");
  cmd->add_option("--rounds", options->rounds, "alternating rounds")->check(CLI::Range(1, 99));
  cmd->add_option("--keys", options->keys, "timed key pairs per run")->check(CLI::Range(1, 100000));
  cmd->add_flag("--keep-keys", options->keep_keys, "keep each run's pairs (the member tokens grow over the run)");
  cmd->add_option("--softhsm", options->softhsm, "SoftHSM's module");
  cmd->add_option("--p11ha", options->p11ha, "libp11ha.so");
  cmd->add_option("--cli", options->cli, "the p11ha CLI (stages the domain key)");
  cmd->add_option("--out", options->out, "also write the tables here");
  commands.emplace_back(cmd, [options](const std::string& self) { return Replication(*options, self); });

  auto run = std::make_shared<RunOptions>();
  // Both measured sides take the same options; each one's run is a fresh process.
  auto add_run = [&](const char* name, const char* what, const char* destroys, auto measure) {
    auto* sub = app.add_subcommand(name, what);
    sub->add_option("--module", run->module)->required();
    sub->add_option("--token", run->token)->required();
    sub->add_option("--pin-file", run->pin_file)->required();
    sub->add_option("--keys", run->keys)->check(CLI::Range(1, 100000));
    sub->add_option("--label", run->label)->required();
    sub->add_flag("--destroy", run->destroy, destroys);
    commands.emplace_back(sub, [run, measure](const std::string&) { return measure(*run); });
    return sub;
  };
  add_run("keygen-run", "one run of key pair generations (used by replication)",
          "destroy the pairs afterwards (untimed)", KeygenRun);
  auto* floor = add_run("keygen-floor-run",
                        "key pairs born on --token and copied to r2 (and r3) directly (used by replication)",
                        "destroy the pairs and copies afterwards (untimed)", KeygenFloorRun);
  floor->add_option("--copies", run->copies, "copy to r2 only (1) or to r2 and r3 at once (2)")
      ->check(CLI::Range(1, 2));
  floor->add_flag("--workers", run->workers, "each token's part as one call through p11ha's call executor");
}

}  // namespace p11ha::bench
