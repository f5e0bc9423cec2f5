// SPDX-License-Identifier: Apache-2.0
// PINs never reach p11ha's log, even at trace level and on the paths that handle them:
// login, C_SetPIN, a refused login.
#include <catch2/catch.hpp>

#include "support.h"

namespace p11ha::module_test {
namespace {

std::string Hex(const std::string& text, bool upper) {
  static const char* lower_digits = "0123456789abcdef";
  static const char* upper_digits = "0123456789ABCDEF";
  const char* digits = upper ? upper_digits : lower_digits;
  std::string out;
  for (unsigned char c : text) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

TEST_CASE("no PIN appears in a trace-level log", "[integration]") {
  // Distinctive PINs, so that a match cannot be a coincidence.
  const std::string user_pin = "Pz9-unique-7731";
  const std::string new_pin = "Qn4-unique-2208";
  const std::string wrong_pin = "Wx7-unique-5519";

  TempDir dir;
  MakeTokens(dir.path(), 2, user_pin);
  ConfigSpec spec;
  spec.members = FarmMembers(2);
  spec.log_level = "trace";
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);

  CK_FUNCTION_LIST* f = P11ha();
  // Whatever p11ha or its members write to stderr is checked too.
  StderrCapture capture(dir / "stderr.txt");
  {
    Initialized initialized;
    CK_SESSION_HANDLE session = OpenSession(f);
    REQUIRE(Login(f, session, user_pin) == CKR_OK);
    REQUIRE(SetPin(f, session, user_pin, new_pin) == CKR_OK);
    REQUIRE(f->C_Logout(session) == CKR_OK);
    CHECK(Login(f, session, wrong_pin) == CKR_PIN_INCORRECT);
    CHECK(Login(f, session, user_pin) == CKR_PIN_INCORRECT);  // the old one, now wrong
    REQUIRE(Login(f, session, new_pin) == CKR_OK);

    const KeyPair pair = GenerateP256(f, session, /*on_token=*/false, "pin-log");
    CK_RV rv = CKR_OK;
    const Digest digest = Sha256("trace me");
    const Bytes signature = SignDigest(f, session, pair.private_key, digest, &rv);
    REQUIRE(rv == CKR_OK);
    CHECK(VerifyP256(EcPoint(f, session, pair.public_key), digest, signature));
    CHECK(f->C_Logout(session) == CKR_OK);
    CHECK(f->C_CloseSession(session) == CKR_OK);
    CHECK(initialized.Finalize() == CKR_OK);
  }
  const std::string err = capture.Stop();
  const std::string log = ReadFile(spec.log_file);

  INFO("log file (" << log.size() << " bytes):\n" << log);
  // The check below means something only if p11ha really logged at trace level.
  REQUIRE(!log.empty());
  REQUIRE(Contains(log, "trace"));
  for (const std::string& pin : {user_pin, new_pin, wrong_pin}) {
    for (const std::string& form : {pin, Hex(pin, false), Hex(pin, true)}) {
      INFO("looking for " << form);
      CHECK_FALSE(Contains(log, form));
      CHECK_FALSE(Contains(err, form));
    }
  }
}

}  // namespace
}  // namespace p11ha::module_test
