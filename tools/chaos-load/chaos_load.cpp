// SPDX-License-Identifier: Apache-2.0
// p11ha-chaos-load: the application side of ./tools/chaos. It loads libp11ha.so the way an
// application does (dlopen, C_GetFunctionList, C_Initialize), logs in once, makes a long-lived
// EC P-256 and RSA-2048 signing keys and an AES-256 key, and then runs worker threads, each on its own session,
// until STOP_FILE exists or MAX_SECONDS pass (pausing --pause-ms after each operation):
//   signers  ECDSA (single part) and RSA PKCS#1 SHA-256 (multi-part) with the long-lived keys,
//            each signature checked with OpenSSL against the public key
//   keygen   a token EC key pair with a unique label, found by label, used once, destroyed
//            (one pair in --keep-every stays, so that the end state has new keys to check)
//   aes      AES-256-GCM encrypt then decrypt, the plaintext must come back
//   digest   multi-part SHA-256, checked against OpenSSL
// Every CK_RV other than CKR_OK that the application sees is counted with its function. The
// account is printed as key=value lines on stdout (and to ACCOUNT_FILE); "load: started" marks
// the moment the setup is done, so the chaos script starts its faults only then.
// Usage: p11ha-chaos-load [--signers N] [--keygen N] [--aes N] [--digest N] [--keep-every N]
//                         [--pause-ms N] MODULE PIN_FILE TOKEN_LABEL STOP_FILE MAX_SECONDS [ACCOUNT_FILE]
// Exit: 0 when the application saw no error and no wrong result, 1 when it did, 2 on bad
// usage or when the setup (before any fault) failed.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "chaos_workers.h"

namespace {

using namespace replication_probe;  // NOLINT: the probe's PKCS#11 helpers are this file's API
using chaos::Worker;

struct Options {
  int signers = 2, keygen = 2, aes = 1, digest = 1, keep_every = 8, pause_ms = 1;
  std::vector<std::string> args;
};

// The long-lived keys, made before any fault: a failure here is a setup failure, not chaos.
using Expected = std::set<std::pair<std::string, CK_OBJECT_CLASS>>;

void MakeKeys(CK_SESSION_HANDLE session, const std::string& prefix, chaos::Shared* s, Expected* made) {
  const Bytes p256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  const std::string label = prefix + "-signer";
  Template pub, priv;
  pub.Bool(CKA_TOKEN, true).Bool(CKA_VERIFY, true).Add(CKA_EC_PARAMS, p256).Add(CKA_LABEL, label);
  priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_SIGN, true);
  priv.Add(CKA_LABEL, label);
  CK_MECHANISM ec_gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pub_key = 0;
  Check(p11->C_GenerateKeyPair(session, &ec_gen, pub.data(), pub.size(), priv.data(), priv.size(), &pub_key,
                               &s->signer_key),
        "C_GenerateKeyPair (signer key)");
  const auto point = Attribute(session, pub_key, CKA_EC_POINT);
  if (!point) throw std::runtime_error("the signer's public key gives no CKA_EC_POINT");
  s->signer_point = *point;
  Template aes;
  aes.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Ulong(CKA_VALUE_LEN, 32);
  aes.Bool(CKA_TOKEN, true).Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true).Add(CKA_LABEL, prefix + "-aes");
  CK_MECHANISM aes_gen{CKM_AES_KEY_GEN, nullptr, 0};
  Check(p11->C_GenerateKey(session, &aes_gen, aes.data(), aes.size(), &s->aes_key), "C_GenerateKey (AES key)");
  Template rsa_pub, rsa_priv;
  rsa_pub.Bool(CKA_TOKEN, true).Bool(CKA_VERIFY, true).Ulong(CKA_MODULUS_BITS, 2048).Add(CKA_LABEL, prefix + "-rsa");
  rsa_pub.Add(CKA_PUBLIC_EXPONENT, Bytes{0x01, 0x00, 0x01});
  rsa_priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_SIGN, true);
  rsa_priv.Add(CKA_LABEL, prefix + "-rsa");
  CK_MECHANISM rsa_gen{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  Check(p11->C_GenerateKeyPair(session, &rsa_gen, rsa_pub.data(), rsa_pub.size(), rsa_priv.data(), rsa_priv.size(),
                               &pub_key, &s->rsa_key),
        "C_GenerateKeyPair (RSA key)");
  const auto modulus = Attribute(session, pub_key, CKA_MODULUS);
  const auto exponent = Attribute(session, pub_key, CKA_PUBLIC_EXPONENT);
  if (!modulus || !exponent) throw std::runtime_error("the RSA public key gives no modulus or exponent");
  s->rsa_modulus = *modulus;
  s->rsa_exponent = *exponent;
  made->insert({{label, CKO_PRIVATE_KEY}, {label, CKO_PUBLIC_KEY}, {prefix + "-aes", CKO_SECRET_KEY},
                {prefix + "-rsa", CKO_PRIVATE_KEY}, {prefix + "-rsa", CKO_PUBLIC_KEY}});
}

struct Audit {
  std::int64_t objects = 0, leaked = 0, lost = 0;
  std::vector<std::string> lines;
};

// The token's objects of this run against those the application made and did not destroy.
// Members that agree with each other satisfy `p11ha verify`; this also catches a key they all
// hold that the application never kept (one made by a creation p11ha retried elsewhere) and
// a kept key that is gone.
Audit AuditObjects(Worker& w, const Expected& expected, const std::string& prefix) {
  Audit a;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes}};
  std::vector<CK_OBJECT_HANDLE> handles;
  if (w.Call("C_FindObjectsInit", [&] { return p11->C_FindObjectsInit(w.session, match, 1); }) != CKR_OK) return a;
  for (CK_ULONG n = 64; n == 64;) {
    CK_OBJECT_HANDLE batch[64];
    if (w.Call("C_FindObjects", [&] { return p11->C_FindObjects(w.session, batch, 64, &n); }) != CKR_OK) break;
    handles.insert(handles.end(), batch, batch + n);
  }
  w.Call("C_FindObjectsFinal", [&] { return p11->C_FindObjectsFinal(w.session); });
  std::multiset<std::pair<std::string, CK_OBJECT_CLASS>> found;
  for (CK_OBJECT_HANDLE h : handles) {
    char label[256];
    CK_OBJECT_CLASS object_class = 0;
    CK_ATTRIBUTE attributes[] = {{CKA_LABEL, label, sizeof label}, {CKA_CLASS, &object_class, sizeof object_class}};
    if (w.Call("C_GetAttributeValue", [&] { return p11->C_GetAttributeValue(w.session, h, attributes, 2); }) != CKR_OK)
      continue;
    const std::string text(label, attributes[0].ulValueLen);
    if (text.rfind(prefix, 0) == 0) found.insert({text, object_class});
  }
  a.objects = static_cast<std::int64_t>(found.size());
  for (auto it = found.begin(); it != found.end(); it = found.upper_bound(*it)) {
    const auto extra = static_cast<std::int64_t>(found.count(*it)) - (expected.count(*it) ? 1 : 0);
    if (extra <= 0) continue;
    a.leaked += extra;
    a.lines.push_back("audit_leaked=" + it->first + " " + ClassName(it->second) + " x" + std::to_string(extra));
  }
  for (const auto& object : expected) {
    if (found.count(object) > 0) continue;
    ++a.lost;
    a.lines.push_back("audit_lost=" + object.first + " " + ClassName(object.second));
  }
  return a;
}

std::string Fixed(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", value);
  return buf;
}

// The account; returns the exit code.
int Account(const std::vector<std::unique_ptr<Worker>>& workers, double seconds, const std::string& path,
            const Audit& audit) {
  std::ostringstream out, errors;
  std::map<std::string, std::int64_t> ops;
  std::map<std::string, std::pair<std::int64_t, double>> kinds;  // "C_Sign CKR_x" -> count, slowest
  std::int64_t calls = 0, total = 0, failures = 0, wrong = 0, created = 0, destroyed = 0, hung = 0;
  double slowest = 0;
  std::vector<std::string> wrong_lines, hung_lines;
  for (const auto& w : workers) {
    if (!w->done) {
      ++hung;
      hung_lines.push_back(w->name + " in " + (w->in_call ? w->in_call.load() : "?") + " since " +
                           std::to_string((chaos::NowMs() - w->call_started_ms) / 1000) + " s");
      continue;  // its counters may still change
    }
    calls += w->calls;
    for (const auto& [kind, n] : w->ops) ops[kind] += n, total += n;
    for (const auto& f : w->failures) {
      auto& k = kinds[std::string(f.function) + " " + chaos::RvText(f.rv)];
      ++k.first;
      k.second = std::max(k.second, f.took_ms);
      errors << "error at=" << f.at << " worker=" << w->name << " function=" << f.function
             << " rv=" << chaos::RvText(f.rv) << " took_ms=" << Fixed(f.took_ms) << '\n';
    }
    failures += static_cast<std::int64_t>(w->failures.size());
    wrong += static_cast<std::int64_t>(w->wrong.size());
    for (const auto& line : w->wrong) wrong_lines.push_back(w->name + ": " + line);
    created += w->keys_created;
    destroyed += w->keys_destroyed;
    slowest = std::max(slowest, w->slowest_ms);
  }
  out << "seconds=" << Fixed(seconds) << '\n' << "calls=" << calls << '\n' << "operations=" << total << '\n';
  for (const auto& [kind, n] : ops) out << "operations." << kind << '=' << n << '\n';
  out << "errors=" << failures << '\n';
  for (const auto& [kind, k] : kinds)
    out << "error_kind=" << kind << " count " << k.first << " slowest_ms " << Fixed(k.second) << '\n';
  out << "wrong_results=" << wrong << '\n';
  for (const auto& line : wrong_lines) out << "wrong=" << line << '\n';
  out << "keys_created=" << created << '\n' << "keys_destroyed=" << destroyed << '\n';
  out << "keys_left=" << created - destroyed << '\n';
  out << "audit_objects=" << audit.objects << '\n' << "audit_unexpected=" << audit.leaked + audit.lost << '\n';
  for (const auto& line : audit.lines) out << line << '\n';
  out << "slowest_call_ms=" << Fixed(slowest) << '\n' << "hung=" << hung << '\n';
  for (const auto& line : hung_lines) out << "hung_worker=" << line << '\n';
  const std::string text = out.str() + errors.str();
  if (!path.empty()) std::ofstream(path) << text;
  // stdout: the account and the first error lines; the file has them all.
  std::istringstream lines(text);
  std::string line;
  int shown = 0;
  while (std::getline(lines, line))
    if (line.rfind("error at=", 0) != 0 || ++shown <= 20) std::cout << line << '\n';
  if (shown > 20) std::cout << "(" << shown - 20 << " more error lines in " << path << ")\n";
  std::cout.flush();
  const bool clean = failures == 0 && wrong == 0 && hung == 0 && total > 0 && audit.leaked + audit.lost == 0;
  return clean ? 0 : 1;
}

int Run(const Options& o) {
  const std::string& stop_file = o.args[3];
  const int max_seconds = std::stoi(o.args[4]);
  if (max_seconds < 1) throw std::invalid_argument("MAX_SECONDS must be >= 1");
  LoadModule(o.args[0]);
  const CK_SESSION_HANDLE main_session = OpenToken(o.args[2], ReadPinFile(o.args[1]));
  chaos::Shared shared;
  shared.label_prefix = "chaos-" + std::to_string(getpid());
  shared.keep_every = std::max(1, o.keep_every);
  shared.pause_ms = std::max(0, o.pause_ms);
  Expected expected;
  MakeKeys(main_session, shared.label_prefix, &shared, &expected);
  std::atomic<bool> stop{false};
  shared.stop = &stop;
  CK_SESSION_INFO info{};
  Check(p11->C_GetSessionInfo(main_session, &info), "C_GetSessionInfo");

  using Loop = void (*)(Worker&, const chaos::Shared&);
  const std::pair<const char*, std::pair<int, Loop>> kinds[] = {{"signer", {o.signers, chaos::SignLoop}},
                                                                {"keygen", {o.keygen, chaos::KeygenLoop}},
                                                                {"aes", {o.aes, chaos::AesLoop}},
                                                                {"digest", {o.digest, chaos::DigestLoop}}};
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<Loop> loops;
  for (const auto& [kind, spec] : kinds) {
    for (int i = 1; i <= spec.first; ++i) {
      workers.push_back(std::make_unique<Worker>());
      workers.back()->name = std::string(kind) + "-" + std::to_string(i);
      loops.push_back(spec.second);
      Check(p11->C_OpenSession(info.slotID, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                               &workers.back()->session),
            "C_OpenSession");
    }
  }
  const auto start = chaos::Clock::now();
  for (std::size_t i = 0; i < workers.size(); ++i) {
    // Detached: a worker stuck in a call must not keep the account from being printed.
    std::thread([&w = *workers[i], loop = loops[i], &shared] {
      try {
        loop(w, shared);
      } catch (const std::exception& e) {
        w.wrong.push_back(chaos::LocalStamp() + " worker ended by an exception: " + e.what());
      }
      w.done = true;
    }).detach();
  }
  std::cout << "load: started " << workers.size() << " workers (" << o.signers << " signer, " << o.keygen
            << " keygen, " << o.aes << " aes, " << o.digest << " digest) at " << chaos::LocalStamp() << std::endl;

  struct stat st{};
  while (stat(stop_file.c_str(), &st) != 0 && chaos::Clock::now() - start < std::chrono::seconds(max_seconds))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  const double seconds = std::chrono::duration<double>(chaos::Clock::now() - start).count();
  auto all_done = [&] { return std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w->done.load(); }); };
  const auto give_up = chaos::Clock::now() + std::chrono::seconds(15);
  while (!all_done() && chaos::Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const bool stuck = !all_done();
  Audit audit;
  if (!stuck) {
    for (const auto& w : workers) expected.insert(w->alive.begin(), w->alive.end());
    workers.push_back(std::make_unique<Worker>());
    workers.back()->name = "audit";
    workers.back()->session = main_session;
    audit = AuditObjects(*workers.back(), expected, shared.label_prefix + "-");
    workers.back()->done = true;
  }
  const int rc = Account(workers, seconds, o.args.size() > 5 ? o.args[5] : "", audit);
  if (stuck) {
    std::cout << "a worker never returned from its call; exiting without C_Finalize" << std::endl;
    std::_Exit(1);
  }
  for (auto& w : workers)
    if (w->session != main_session) p11->C_CloseSession(w->session);
  p11->C_Logout(main_session);
  p11->C_CloseSession(main_session);
  UnloadModule();
  return rc;
}

int Usage() {
  std::cerr << "usage: p11ha-chaos-load [--signers N] [--keygen N] [--aes N] [--digest N] [--keep-every N]\n"
               "                        [--pause-ms N] MODULE PIN_FILE TOKEN_LABEL STOP_FILE MAX_SECONDS [ACCOUNT_FILE]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const std::map<std::string, int*> counts = {{"--signers", &o.signers},
                                              {"--keygen", &o.keygen},
                                              {"--aes", &o.aes},
                                              {"--digest", &o.digest},
                                              {"--keep-every", &o.keep_every},
                                              {"--pause-ms", &o.pause_ms}};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (auto it = counts.find(arg); it != counts.end() && i + 1 < argc) {
        *it->second = std::stoi(argv[++i]);
      } else if (arg.rfind("--", 0) == 0) {
        return Usage();
      } else {
        o.args.push_back(arg);
      }
    }
    if (o.args.size() != 5 && o.args.size() != 6) return Usage();
    return Run(o);
  } catch (const std::exception& e) {
    std::cerr << "p11ha-chaos-load: " << e.what() << '\n';
    return 2;
  }
}
