// SPDX-License-Identifier: Apache-2.0
// Failover acceptance client (DESIGN.md "Failure"), loaded like an application would load p11ha:
//   failover_sign_load --keygen MODULE PIN_FILE LABEL
//       makes the EC P-256 key pair LABEL (token objects) and a certificate with the same
//       CKA_ID, then signs once and verifies.
//   failover_sign_load --verify SIGNATURES SPKI_DER
//       checks signatures another client (FailoverSign.java) wrote; see VerifyFile.
//   failover_sign_load [--expect-outage] [--successes FILE] MODULE PIN_FILE LABEL THREADS
//                      SECONDS [SUMMARY]
//       logs in, finds LABEL's private and public key once, and signs random 32-byte digests
//       with CKM_ECDSA in THREADS threads (one session each) for SECONDS. Every success and
//       every failure is timed; every signature is verified with OpenSSL afterwards.
// The summary (stdout, and SUMMARY as key=value lines for the test script) has ops, errors,
// unverified, hung, the longest gap between two successes (all threads merged, and within one
// thread), the slowest successful signature, and one "error ..." line per failed call with
// how long that call took. --successes writes "<ms> <thread>" per success.
// Exit: 0 when the run was clean (with --expect-outage: errors are allowed), 1 when not,
// 2 on bad usage or when the key cannot be set up.
// SIGPIPE keeps its default action on purpose: a C application does not ignore it, so a write
// to a dead remote member must be p11ha's problem, not hidden by the test.
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "probe_support.h"

namespace {

using namespace replication_probe;  // NOLINT: the probe's PKCS#11 helpers are this file's API
using Clock = std::chrono::steady_clock;

std::int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;

void Ssl(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what + " failed");
}

// A certificate for the token's public key. SunPKCS11's KeyStore lists a private key only
// when a certificate with the same CKA_ID exists, and never checks its signature, so a
// throwaway issuer key is enough and the token key signs nothing but the load.
Bytes Certificate(EVP_PKEY* subject_key, const std::string& common_name, Bytes* subject) {
  Pkey issuer(EVP_EC_gen("prime256v1"));
  std::unique_ptr<X509, Deleter<X509, X509_free>> cert(X509_new());
  Ssl(issuer && cert, "EVP_EC_gen / X509_new");
  X509_NAME* name = X509_get_subject_name(cert.get());
  Ssl(X509_set_version(cert.get(), 2) == 1 &&
          ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1 &&
          X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) != nullptr &&
          X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400L * 365) != nullptr &&
          X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(common_name.c_str()),
                                     -1, -1, 0) == 1 &&
          X509_set_issuer_name(cert.get(), name) == 1 &&
          X509_set_pubkey(cert.get(), subject_key) == 1 &&
          X509_sign(cert.get(), issuer.get(), EVP_sha256()) > 0,
      "certificate");
  subject->resize(static_cast<std::size_t>(i2d_X509_NAME(name, nullptr)));
  unsigned char* out = subject->data();
  i2d_X509_NAME(name, &out);
  Bytes der(static_cast<std::size_t>(i2d_X509(cert.get(), nullptr)));
  out = der.data();
  i2d_X509(cert.get(), &out);
  return der;
}

CK_OBJECT_HANDLE FindOne(CK_SESSION_HANDLE session, const std::string& label,
                         CK_OBJECT_CLASS object_class) {
  const auto found = FindLabel(session, label, object_class);
  if (found.size() != 1) {
    throw std::runtime_error("expected one " + std::string(ClassName(object_class)) +
                             " object labelled '" + label + "', found " +
                             std::to_string(found.size()));
  }
  return found[0];
}

Bytes SignOnce(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key, const Bytes& digest) {
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  Check(p11->C_SignInit(session, &mechanism, key), "C_SignInit");
  Bytes signature(64);
  CK_ULONG size = signature.size();
  Check(p11->C_Sign(session, const_cast<unsigned char*>(digest.data()), digest.size(),
                    signature.data(), &size),
        "C_Sign");
  signature.resize(size);
  return signature;
}

int Keygen(const std::string& module, const std::string& pin, const std::string& label) {
  LoadModule(module);
  const CK_SESSION_HANDLE session = OpenToken("ha-test", pin);
  const Bytes p256_oid = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  const Bytes id(label.begin(), label.end());
  Template pub, priv;
  pub.Bool(CKA_TOKEN, true).Bool(CKA_VERIFY, true).Add(CKA_EC_PARAMS, p256_oid);
  pub.Add(CKA_LABEL, label).Add(CKA_ID, id);
  priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
  priv.Bool(CKA_SIGN, true).Add(CKA_LABEL, label).Add(CKA_ID, id);
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pub_key = 0, priv_key = 0;
  Check(p11->C_GenerateKeyPair(session, &mechanism, pub.data(), pub.size(), priv.data(),
                               priv.size(), &pub_key, &priv_key),
        "C_GenerateKeyPair");
  const auto point = Attribute(session, pub_key, CKA_EC_POINT);
  if (!point) throw std::runtime_error("the new public key has no CKA_EC_POINT");
  const EcdsaVerifier verifier("prime256v1", BarePoint(*point));
  Bytes subject;
  const Bytes der = Certificate(verifier.key(), label, &subject);
  Template cert;
  cert.Ulong(CKA_CLASS, CKO_CERTIFICATE).Ulong(CKA_CERTIFICATE_TYPE, CKC_X_509);
  cert.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, false).Add(CKA_LABEL, label).Add(CKA_ID, id);
  cert.Add(CKA_SUBJECT, subject).Add(CKA_VALUE, der);
  CK_OBJECT_HANDLE cert_object = 0;
  Check(p11->C_CreateObject(session, cert.data(), cert.size(), &cert_object), "C_CreateObject");

  Bytes digest(32);
  RAND_bytes(digest.data(), static_cast<int>(digest.size()));
  const bool ok = verifier.Verify(digest, SignOnce(session, priv_key, digest));
  std::cout << "keygen: EC P-256 key pair and certificate '" << label << "' created; "
            << (ok ? "a test signature verifies" : "the test signature does NOT verify") << "\n";
  p11->C_Logout(session);
  p11->C_CloseSession(session);
  UnloadModule();
  return ok ? 0 : 1;
}

struct Failure {
  std::int64_t at_ms;  // CLOCK_REALTIME when the failing call returned
  const char* function;
  CK_RV rv;
  double took_ms;
};

struct Worker {
  CK_SESSION_HANDLE session = 0;
  std::vector<std::int64_t> successes;
  std::vector<Bytes> digests, signatures;
  std::vector<Failure> failures;
  double slowest_ms = 0;  // the slowest successful C_SignInit + C_Sign
  std::atomic<bool> done{false};
  std::atomic<const char*> in_call{nullptr};  // for the report when a call never returns
  std::atomic<std::int64_t> call_started_ms{0};
};

void SignLoop(Worker& w, CK_OBJECT_HANDLE key, Clock::time_point deadline) {
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  while (Clock::now() < deadline) {
    Bytes digest(32), signature(64);
    RAND_bytes(digest.data(), static_cast<int>(digest.size()));
    const auto started = Clock::now();
    auto call_started = started;
    w.call_started_ms = NowMs();
    w.in_call = "C_SignInit";
    CK_RV rv = p11->C_SignInit(w.session, &mechanism, key);
    const char* function = "C_SignInit";
    if (rv == CKR_OK) {
      call_started = Clock::now();
      w.call_started_ms = NowMs();
      w.in_call = function = "C_Sign";
      CK_ULONG size = signature.size();
      rv = p11->C_Sign(w.session, digest.data(), digest.size(), signature.data(), &size);
      signature.resize(size);
    }
    w.in_call = nullptr;
    if (rv == CKR_OK) {
      w.slowest_ms = std::max(w.slowest_ms, MsSince(started));
      w.successes.push_back(NowMs());
      w.digests.push_back(std::move(digest));
      w.signatures.push_back(std::move(signature));
      continue;
    }
    w.failures.push_back({NowMs(), function, rv, MsSince(call_started)});
    // A failing module can answer in microseconds; do not turn the run into a spin.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  w.done = true;
}

struct Options {
  bool expect_outage = false;
  std::string successes_path;
  std::vector<std::string> args;
};

struct Report {
  std::ostringstream text;  // key=value lines, the form the test script reads
  void Put(const std::string& key, const std::string& value) { text << key << '=' << value << '\n'; }
  void Put(const std::string& key, std::int64_t value) { Put(key, std::to_string(value)); }
};

std::string Fixed(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", value);
  return buf;
}

struct Gap {
  std::int64_t ms = 0, from = 0, to = 0;
};

// The longest stretch without a success in sorted `at`, the run's edges included: a load that
// stops succeeding before its end has a gap too.
Gap MaxGap(const std::vector<std::int64_t>& at, std::int64_t start_ms, std::int64_t end_ms) {
  Gap gap{0, start_ms, start_ms};
  std::int64_t previous = start_ms;
  for (std::int64_t t : at) {
    if (t - previous > gap.ms) gap = {t - previous, previous, t};
    previous = t;
  }
  if (end_ms - previous > gap.ms) gap = {end_ms - previous, previous, end_ms};
  return gap;
}

// Summarises the run; returns the process exit code.
int Summarise(const Options& o, std::vector<std::unique_ptr<Worker>>& workers, const EcdsaVerifier& verifier,
              std::int64_t start_ms, std::int64_t end_ms) {
  Report r;
  std::vector<std::int64_t> all;
  std::int64_t ops = 0, errors = 0, unverified = 0, hung = 0;
  double error_max = 0, slowest = 0;
  Gap thread_gap;
  std::int64_t thread_gap_index = -1;
  std::map<std::string, std::pair<int, double>> kinds;  // "C_Sign CKR_x" -> count, max ms
  std::ostringstream error_lines, thread_lines;
  for (std::size_t t = 0; t < workers.size(); ++t) {
    Worker& w = *workers[t];
    if (!w.done) {
      ++hung;
      thread_lines << "hung.thread" << t << '=' << (w.in_call ? w.in_call.load() : "?")
                   << " since_ms " << w.call_started_ms << '\n';
      continue;  // its vectors may still be written to
    }
    for (std::size_t i = 0; i < w.successes.size(); ++i) {
      if (!verifier.Verify(w.digests[i], w.signatures[i])) ++unverified;
    }
    ops += static_cast<std::int64_t>(w.successes.size());
    slowest = std::max(slowest, w.slowest_ms);
    all.insert(all.end(), w.successes.begin(), w.successes.end());
    // Merged over all threads, one thread stuck in a frozen member hides behind the others.
    const Gap own = MaxGap(w.successes, start_ms, end_ms);
    if (own.ms > thread_gap.ms) thread_gap = own, thread_gap_index = static_cast<std::int64_t>(t);
    std::int64_t last_error = 0;
    for (const Failure& f : w.failures) {
      ++errors;
      error_max = std::max(error_max, f.took_ms);
      auto& kind = kinds[std::string(f.function) + ' ' + RvName(f.rv)];
      ++kind.first;
      kind.second = std::max(kind.second, f.took_ms);
      error_lines << "error at_ms=" << f.at_ms << " thread=" << t << " function=" << f.function
                  << " rv=" << RvName(f.rv) << " took_ms=" << Fixed(f.took_ms) << '\n';
      last_error = f.at_ms;
    }
    thread_lines << "thread" << t << "=ops " << w.successes.size() << " errors "
                 << w.failures.size() << " last_success_ms "
                 << (w.successes.empty() ? 0 : w.successes.back()) << " last_error_ms "
                 << last_error << " max_gap_ms " << own.ms << '\n';
  }
  std::sort(all.begin(), all.end());
  const Gap gap = MaxGap(all, start_ms, end_ms);

  r.Put("mode", o.expect_outage ? "expect-outage" : "load");
  r.Put("threads", static_cast<std::int64_t>(workers.size()));
  r.Put("start_ms", start_ms);
  r.Put("end_ms", end_ms);
  r.Put("ops", ops);
  r.Put("errors", errors);
  r.Put("unverified", unverified);
  r.Put("hung", hung);
  r.Put("max_gap_ms", gap.ms);
  r.Put("max_gap_from_ms", gap.from);
  r.Put("max_gap_to_ms", gap.to);
  r.Put("thread_max_gap_ms", thread_gap.ms);
  r.Put("thread_max_gap_thread", thread_gap_index);
  r.Put("thread_max_gap_from_ms", thread_gap.from);
  r.Put("thread_max_gap_to_ms", thread_gap.to);
  r.Put("first_success_ms", all.empty() ? 0 : all.front());
  r.Put("last_success_ms", all.empty() ? 0 : all.back());
  r.Put("slowest_success_ms", Fixed(slowest));
  r.Put("error_max_ms", Fixed(error_max));
  for (const auto& [kind, stats] : kinds) {
    r.text << "error_kind=" << kind << " count " << stats.first << " max_ms "
           << Fixed(stats.second) << '\n';
  }
  r.text << thread_lines.str() << error_lines.str();

  if (!o.successes_path.empty()) {
    std::ofstream out(o.successes_path);
    for (std::size_t t = 0; t < workers.size(); ++t) {
      if (!workers[t]->done) continue;
      for (std::int64_t at : workers[t]->successes) out << at << ' ' << t << '\n';
    }
  }
  const std::string text = r.text.str();
  if (o.args.size() > 5) std::ofstream(o.args[5]) << text;
  // stdout gets everything but the per-error lines beyond the first few.
  std::istringstream lines(text);
  std::string line;
  int shown = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("error at_ms=", 0) == 0 && ++shown > 12) continue;
    std::cout << line << '\n';
  }
  if (shown > 12) std::cout << "(" << shown - 12 << " more error lines in the summary file)\n";
  std::cout.flush();
  const bool clean = ops > 0 && unverified == 0 && hung == 0 && (o.expect_outage || errors == 0);
  return clean ? 0 : 1;
}

int Load(const Options& o) {
  const std::string& label = o.args[2];
  const int threads = std::stoi(o.args[3]);
  const int seconds = std::stoi(o.args[4]);
  if (threads < 1 || seconds < 1) throw std::invalid_argument("THREADS and SECONDS must be >= 1");

  // Handles are looked up once: the test is that they stay valid through every failure.
  LoadModule(o.args[0]);
  const CK_SESSION_HANDLE main_session = OpenToken("ha-test", ReadPinFile(o.args[1]));
  const CK_OBJECT_HANDLE key = FindOne(main_session, label, CKO_PRIVATE_KEY);
  const CK_OBJECT_HANDLE pub = FindOne(main_session, label, CKO_PUBLIC_KEY);
  const auto point = Attribute(main_session, pub, CKA_EC_POINT);
  if (!point) throw std::runtime_error("public key '" + label + "' gives no CKA_EC_POINT");
  const EcdsaVerifier public_key("prime256v1", BarePoint(*point));
  CK_SESSION_INFO info{};
  Check(p11->C_GetSessionInfo(main_session, &info), "C_GetSessionInfo");
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < threads; ++i) {
    workers.push_back(std::make_unique<Worker>());
    Check(p11->C_OpenSession(info.slotID, CKF_SERIAL_SESSION, nullptr, nullptr,
                             &workers.back()->session),
          "C_OpenSession");
  }
  std::cout << "load: key handle " << key << ", " << threads << " sessions, " << seconds
            << " s\n" << std::flush;

  const std::int64_t start_ms = NowMs();
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  for (auto& w : workers) std::thread(SignLoop, std::ref(*w), key, deadline).detach();
  // A call that never returns must still give a report: wait a bounded time, then summarise
  // without the stuck threads and leave without C_Finalize (which would wait for them).
  const auto give_up = deadline + std::chrono::seconds(10);
  auto all_done = [&] {
    return std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w->done.load(); });
  };
  while (!all_done() && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const bool stuck = !all_done();
  const int rc = Summarise(o, workers, public_key, start_ms, start_ms + seconds * 1000LL);
  if (stuck) {
    std::cout << "some threads never returned from their call; exiting without C_Finalize\n";
    std::cout.flush();
    std::_Exit(1);
  }
  for (auto& w : workers) p11->C_CloseSession(w->session);
  p11->C_Logout(main_session);
  p11->C_CloseSession(main_session);
  UnloadModule();
  return rc;
}

Bytes FromHex(const std::string& hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<unsigned char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// Another client's signatures: lines "<hex SHA-256 digest> <hex DER signature>", checked with
// OpenSSL against a SubjectPublicKeyInfo read from a member token directly. The JVM's own
// ECDSA verification is pure Java and would take longer than the run itself.
int VerifyFile(const std::string& signatures, const std::string& spki_path) {
  std::ifstream spki_file(spki_path, std::ios::binary);
  const std::string spki((std::istreambuf_iterator<char>(spki_file)), std::istreambuf_iterator<char>());
  const auto* cursor = reinterpret_cast<const unsigned char*>(spki.data());
  Pkey key(d2i_PUBKEY(nullptr, &cursor, static_cast<long>(spki.size())));
  Ssl(key != nullptr, "d2i_PUBKEY");
  PkeyCtx ctx(EVP_PKEY_CTX_new(key.get(), nullptr));
  Ssl(ctx && EVP_PKEY_verify_init(ctx.get()) == 1, "EVP_PKEY_verify_init");
  std::ifstream in(signatures);
  if (!in) throw std::runtime_error("cannot read " + signatures);
  std::int64_t verified = 0, unverified = 0;
  std::string digest, signature;
  while (in >> digest >> signature) {
    const Bytes d = FromHex(digest), sig = FromHex(signature);
    if (EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), d.data(), d.size()) == 1) {
      ++verified;
    } else {
      ++unverified;
    }
  }
  std::cout << "verified=" << verified << "\nunverified=" << unverified << '\n';
  return verified > 0 && unverified == 0 ? 0 : 1;
}

int Usage() {
  std::cerr << "usage: failover_sign_load --keygen MODULE PIN_FILE LABEL\n"
               "       failover_sign_load [--expect-outage] [--successes FILE] MODULE PIN_FILE"
               " LABEL THREADS SECONDS [SUMMARY]\n"
               "       failover_sign_load --verify SIGNATURES SPKI_DER\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool keygen = false, verify = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--keygen") {
      keygen = true;
    } else if (arg == "--verify") {
      verify = true;
    } else if (arg == "--expect-outage") {
      o.expect_outage = true;
    } else if (arg == "--successes" && i + 1 < argc) {
      o.successes_path = argv[++i];
    } else if (arg.rfind("--", 0) == 0) {
      return Usage();
    } else {
      o.args.push_back(arg);
    }
  }
  try {
    if (verify) return o.args.size() == 2 ? VerifyFile(o.args[0], o.args[1]) : Usage();
    if (keygen) return o.args.size() == 3 ? Keygen(o.args[0], ReadPinFile(o.args[1]), o.args[2]) : Usage();
    if (o.args.size() != 5 && o.args.size() != 6) return Usage();
    return Load(o);
  } catch (const std::exception& e) {
    std::cerr << "failover_sign_load: " << e.what() << '\n';
    return 2;
  }
}
