// SPDX-License-Identifier: Apache-2.0
#include "replication/archive.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

namespace p11ha::replication {
namespace {

using Catch::Matchers::Contains;
using Kind = ArchiveError::Kind;

// Low enough that opening hundreds of damaged copies stays fast.
constexpr ScryptCost kFastCost{10, 8, 1};
constexpr char kSource[] = "backup.p11ha";

// The header layout documented in archive.h, restated so the tests check the documented format
// rather than the implementation's own constants.
constexpr std::size_t kCostOffset = 17;
constexpr std::size_t kSaltOffset = 26;
constexpr std::size_t kNonceOffset = 42;
constexpr std::size_t kVerifierOffset = 54;
constexpr std::size_t kHeaderBytes = 86;
constexpr std::size_t kTagBytes = 16;

std::vector<CK_BYTE> BytesOf(std::string_view text) { return std::vector<CK_BYTE>(text.begin(), text.end()); }

template <typename T>
std::vector<CK_BYTE> ScalarBytes(T value) {
  std::vector<CK_BYTE> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  return bytes;
}

std::string IdentityOf(std::uint8_t seed) {
  std::string identity(32, '\0');
  for (std::size_t i = 0; i < identity.size(); ++i) identity[i] = static_cast<char>(seed * 37 + i * 11);
  return identity;
}

ArchiveRecord WrappedPrivateKey() {
  ArchiveRecord record;
  record.identity = IdentityOf(1);
  record.plan.object_class = CKO_PRIVATE_KEY;
  record.plan.by_wrap = true;
  for (int i = 0; i < 48; ++i) record.plan.wrapped.push_back(static_cast<CK_BYTE>(0xa0 ^ i));
  CK_BBOOL yes = CK_TRUE;
  record.plan.attributes = {
      {CKA_CLASS, ScalarBytes<CK_OBJECT_CLASS>(CKO_PRIVATE_KEY)},
      {CKA_KEY_TYPE, ScalarBytes<CK_KEY_TYPE>(CKK_EC)},
      {CKA_LABEL, BytesOf("payments signing key")},
      {CKA_ID, {0x01, 0x02, 0x03}},
      {CKA_SIGN, ScalarBytes(yes)},
      {CKA_EC_PARAMS, {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}},
  };
  return record;
}

ArchiveRecord Certificate() {
  ArchiveRecord record;
  record.identity = IdentityOf(2);
  record.plan.object_class = CKO_CERTIFICATE;
  std::vector<CK_BYTE> der;
  for (int i = 0; i < 300; ++i) der.push_back(static_cast<CK_BYTE>(i));  // every byte value, NULs too
  record.plan.attributes = {
      {CKA_CLASS, ScalarBytes<CK_OBJECT_CLASS>(CKO_CERTIFICATE)},
      {CKA_CERTIFICATE_TYPE, ScalarBytes<CK_CERTIFICATE_TYPE>(CKC_X_509)},
      {CKA_LABEL, BytesOf("payments signing certificate")},
      {CKA_SUBJECT, BytesOf("CN=payments")},
      {CKA_VALUE, der},
  };
  return record;
}

ArchiveRecord DataObject() {
  ArchiveRecord record;
  record.identity = IdentityOf(3);
  record.plan.object_class = CKO_DATA;
  CK_BBOOL no = CK_FALSE;
  record.plan.attributes = {
      {CKA_CLASS, ScalarBytes<CK_OBJECT_CLASS>(CKO_DATA)},
      {CKA_APPLICATION, BytesOf("p11ha tests")},
      {CKA_VALUE, {}},  // an empty value must survive as present-and-empty
      {CKA_PRIVATE, ScalarBytes(no)},
  };
  return record;
}

Archive Sample(ArchiveKind kind = ArchiveKind::kArchive) {
  Archive archive;
  archive.manifest.kind = kind;
  archive.manifest.cluster = "prod-hsm";
  archive.manifest.source = "cluster";
  archive.manifest.domain = *ParseCheckValueHex("0123456789abcdef");
  archive.manifest.created = "2026-12-02T17:04:05Z";
  archive.records = {WrappedPrivateKey(), Certificate(), DataObject()};
  for (const ArchiveRecord& record : archive.records) archive.manifest.identities.push_back(record.identity);
  return archive;
}

// One record keeps the every-byte loops short.
Archive Small() {
  Archive archive = Sample();
  archive.records.resize(1);
  archive.manifest.identities.resize(1);
  return archive;
}

void CheckSame(const Archive& got, const Archive& want) {
  CHECK(got.manifest.kind == want.manifest.kind);
  CHECK(got.manifest.cluster == want.manifest.cluster);
  CHECK(got.manifest.source == want.manifest.source);
  CHECK(got.manifest.domain == want.manifest.domain);
  CHECK(got.manifest.created == want.manifest.created);
  CHECK(got.manifest.identities == want.manifest.identities);
  REQUIRE(got.records.size() == want.records.size());
  for (std::size_t i = 0; i < want.records.size(); ++i) {
    INFO("record " << i);
    const CopyPlan& a = got.records[i].plan;
    const CopyPlan& b = want.records[i].plan;
    CHECK(got.records[i].identity == want.records[i].identity);
    CHECK(a.object_class == b.object_class);
    CHECK(a.by_wrap == b.by_wrap);
    CHECK(a.wrapped == b.wrapped);
    REQUIRE(a.attributes.size() == b.attributes.size());
    for (std::size_t j = 0; j < b.attributes.size(); ++j) {
      CHECK(a.attributes[j].type == b.attributes[j].type);
      CHECK(a.attributes[j].value == b.attributes[j].value);
    }
  }
}

SecureBytes Passphrase(std::string_view text = "correct horse battery staple") { return SecureBytes(text); }

// "opened", or the failure's kind by name, so a mismatch reads well in the test output.
std::string OutcomeOf(std::span<const std::uint8_t> file, const SecureBytes& passphrase = Passphrase()) {
  try {
    OpenArchive(file, passphrase, kSource);
    return "opened";
  } catch (const ArchiveError& e) {
    switch (e.kind()) {
      case Kind::kUnreadable: return "unreadable";
      case Kind::kNotAnArchive: return "not an archive";
      case Kind::kWrongPassphrase: return "wrong passphrase";
      case Kind::kTampered: return "tampered";
      case Kind::kMalformed: return "malformed";
    }
  }
  return "unknown kind";
}

std::string MessageOf(std::span<const std::uint8_t> file, const SecureBytes& passphrase = Passphrase()) {
  try {
    OpenArchive(file, passphrase, kSource);
  } catch (const ArchiveError& e) {
    return e.what();
  }
  return "opened";
}

TEST_CASE("an archive of several records opens to the same records", "[archive]") {
  Archive archive = Sample();
  std::vector<std::uint8_t> file = SealArchive(archive, Passphrase(), kFastCost);
  REQUIRE(file.size() > kHeaderBytes + kTagBytes);
  CHECK(std::string(file.begin(), file.begin() + 17) == "p11ha-archive v1\n");
  CHECK(file[kCostOffset] == 10);

  CheckSame(OpenArchive(file, Passphrase(), kSource), archive);
}

TEST_CASE("a package keeps its kind", "[archive]") {
  Archive package = Sample(ArchiveKind::kPackage);
  package.manifest.source = "pkcs11:token=payments";
  Archive opened = OpenArchive(SealArchive(package, Passphrase(), kFastCost), Passphrase(), kSource);
  CHECK(opened.manifest.kind == ArchiveKind::kPackage);
  CheckSame(opened, package);
  CHECK(std::string(ArchiveKindName(ArchiveKind::kPackage)) == "package");
  CHECK(std::string(ArchiveKindName(ArchiveKind::kArchive)) == "archive");
}

TEST_CASE("an archive with no records round-trips", "[archive]") {
  Archive empty;
  empty.manifest.created = "2026-12-02T17:04:05Z";
  Archive opened = OpenArchive(SealArchive(empty, Passphrase(), kFastCost), Passphrase(), kSource);
  CHECK(opened.records.empty());
  CHECK(opened.manifest.created == empty.manifest.created);
}

TEST_CASE("the default scrypt cost is written to the header and opens", "[archive]") {
  Archive archive = Small();
  std::vector<std::uint8_t> file = SealArchive(archive, Passphrase());
  CHECK(file[kCostOffset] == 15);
  CHECK(std::vector<std::uint8_t>(file.begin() + 18, file.begin() + 26) ==
        std::vector<std::uint8_t>{0, 0, 0, 8, 0, 0, 0, 1});
  CheckSame(OpenArchive(file, Passphrase(), kSource), archive);
}

TEST_CASE("a wrong passphrase is told apart from damage", "[archive]") {
  std::vector<std::uint8_t> file = SealArchive(Small(), Passphrase(), kFastCost);
  CHECK(OutcomeOf(file, Passphrase("correct horse battery stapler")) == "wrong passphrase");
  CHECK(OutcomeOf(file, Passphrase("")) == "wrong passphrase");
  CHECK_THAT(MessageOf(file, Passphrase("nope")), Contains(kSource) && Contains("wrong passphrase"));
}

TEST_CASE("every single changed byte is detected, by the part of the file it is in", "[archive]") {
  std::vector<std::uint8_t> file = SealArchive(Small(), Passphrase(), kFastCost);
  for (std::uint8_t mask : {std::uint8_t{0x01}, std::uint8_t{0xff}}) {
    // Past the header every change gives the same answer; one mask there keeps the test quick.
    const std::size_t end = mask == 0x01 ? file.size() : kHeaderBytes;
    for (std::size_t i = 0; i < end; ++i) {
      std::vector<std::uint8_t> changed = file;
      changed[i] ^= mask;
      std::string outcome = OutcomeOf(changed);
      INFO("byte " << i << " of " << file.size() << " xor " << int{mask} << ": " << outcome);
      if (i < kCostOffset) {
        CHECK(outcome == "not an archive");
      } else if (i < kSaltOffset) {
        // An out-of-range cost is refused outright; an in-range one derives other keys.
        CHECK((outcome == "not an archive" || (mask == 0x01 && outcome == "wrong passphrase")));
      } else if (i < kNonceOffset) {
        CHECK(outcome == "wrong passphrase");
      } else if (i < kVerifierOffset) {
        CHECK(outcome == "tampered");
      } else if (i < kHeaderBytes) {
        CHECK(outcome == "wrong passphrase");
      } else {
        CHECK(outcome == "tampered");
      }
    }
  }
  std::vector<std::uint8_t> changed = file;
  changed.back() ^= 1;
  CHECK_THAT(MessageOf(changed), Contains(kSource) && Contains("authentication failed"));
}

TEST_CASE("a truncated or extended archive is refused", "[archive]") {
  std::vector<std::uint8_t> file = SealArchive(Small(), Passphrase(), kFastCost);
  const std::size_t size = file.size();
  for (std::size_t length : {std::size_t{0}, std::size_t{1}, std::size_t{14}, std::size_t{16}, std::size_t{17},
                             std::size_t{50}, kHeaderBytes - 1, kHeaderBytes, kHeaderBytes + kTagBytes - 1}) {
    INFO("length " << length);
    CHECK(OutcomeOf(std::span(file).first(length)) == "not an archive");
  }
  for (std::size_t length : {kHeaderBytes + kTagBytes, kHeaderBytes + kTagBytes + 1, size - kTagBytes - 1,
                             size - kTagBytes, size - 1}) {
    INFO("length " << length);
    CHECK(OutcomeOf(std::span(file).first(length)) == "tampered");
  }
  for (std::size_t extra : {1, 16, 1000}) {
    INFO("extra " << extra);
    std::vector<std::uint8_t> longer = file;
    longer.resize(size + extra, 0);
    CHECK(OutcomeOf(longer) == "tampered");
  }
  std::vector<std::uint8_t> other(200, 'x');
  CHECK_THAT(MessageOf(other), Contains("not a p11ha archive"));
  std::vector<std::uint8_t> newer = file;
  newer[15] = '2';
  CHECK_THAT(MessageOf(newer), Contains("version"));
}

TEST_CASE("an out-of-range scrypt cost is refused before any key derivation", "[archive]") {
  std::vector<std::uint8_t> file = SealArchive(Small(), Passphrase(), kFastCost);
  struct Forgery {
    std::size_t offset;
    std::vector<std::uint8_t> bytes;
    const char* named;
  };
  const std::vector<Forgery> forgeries = {
      {kCostOffset, {40}, "log2(N) is 40"},
      {kCostOffset, {9}, "log2(N) is 9"},
      {kCostOffset, {23}, "log2(N) is 23"},
      {kCostOffset + 1, {0, 0, 0, 33}, "r is 33"},
      {kCostOffset + 1, {0xff, 0xff, 0xff, 0xff}, "r is 4294967295"},
      {kCostOffset + 1, {0, 0, 0, 0}, "r is 0"},
      {kCostOffset + 5, {0, 0, 0, 17}, "p is 17"},
      {kCostOffset + 5, {0, 0, 0, 0}, "p is 0"},
      // In range each, but scrypt itself needs N < 2^(16 r).
      {kCostOffset, {16, 0, 0, 0, 1}, "log2(N) is 16"},
      // In range each, but together 16 GiB of memory, or 2^23 rounds of work.
      {kCostOffset, {22, 0, 0, 0, 32}, "16384 MiB"},
      {kCostOffset, {16, 0, 0, 0, 8, 0, 0, 0, 16}, "N r p is above 2^22"},
  };
  for (const Forgery& forgery : forgeries) {
    INFO(forgery.named);
    std::vector<std::uint8_t> forged = file;
    std::copy(forgery.bytes.begin(), forgery.bytes.end(), forged.begin() + static_cast<long>(forgery.offset));
    auto start = std::chrono::steady_clock::now();
    CHECK(OutcomeOf(forged) == "not an archive");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(100));
    CHECK_THAT(MessageOf(forged), Contains(kSource) && Contains(forgery.named));
  }
}

TEST_CASE("sealing refuses an inconsistent archive or an unreadable cost", "[archive]") {
  SECTION("identities out of order") {
    Archive archive = Sample();
    std::swap(archive.manifest.identities[0], archive.manifest.identities[1]);
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("an identity missing from the manifest") {
    Archive archive = Sample();
    archive.manifest.identities.pop_back();
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("a record missing") {
    Archive archive = Sample();
    archive.records.pop_back();
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("an identity that is not 32 bytes") {
    Archive archive = Sample();
    archive.records[0].identity.pop_back();
    archive.manifest.identities[0].pop_back();
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("a wrapped key with no wrapped bytes") {
    Archive archive = Sample();
    archive.records[0].plan.wrapped.clear();
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("a private key that would travel by attributes") {
    Archive archive = Sample();
    archive.records[0].plan.by_wrap = false;
    archive.records[0].plan.wrapped.clear();
    CHECK_THROWS_AS(SealArchive(archive, Passphrase(), kFastCost), std::invalid_argument);
  }
  SECTION("a cost no reader accepts") {
    CHECK_THROWS_AS(SealArchive(Small(), Passphrase(), ScryptCost{23, 8, 1}), std::invalid_argument);
    CHECK_THROWS_AS(SealArchive(Small(), Passphrase(), ScryptCost{10, 0, 1}), std::invalid_argument);
    CHECK_THROWS_AS(SealArchive(Small(), Passphrase(), ScryptCost{10, 8, 17}), std::invalid_argument);
  }
}

TEST_CASE("every seal draws a fresh salt and nonce", "[archive]") {
  Archive archive = Small();
  std::vector<std::uint8_t> first = SealArchive(archive, Passphrase(), kFastCost);
  std::vector<std::uint8_t> second = SealArchive(archive, Passphrase(), kFastCost);
  REQUIRE(first.size() == second.size());
  CHECK(first != second);
  auto part = [](const std::vector<std::uint8_t>& file, std::size_t from, std::size_t to) {
    return std::vector<std::uint8_t>(file.begin() + static_cast<long>(from), file.begin() + static_cast<long>(to));
  };
  CHECK(part(first, kSaltOffset, kNonceOffset) != part(second, kSaltOffset, kNonceOffset));
  CHECK(part(first, kNonceOffset, kVerifierOffset) != part(second, kNonceOffset, kVerifierOffset));
  CHECK(part(first, kHeaderBytes, first.size()) != part(second, kHeaderBytes, second.size()));
  CheckSame(OpenArchive(first, Passphrase(), kSource), archive);
  CheckSame(OpenArchive(second, Passphrase(), kSource), archive);
}

// ---- bodies that authenticate but do not parse --------------------------------------------
//
// Only the holder of the passphrase can make these, so they stand for a bug or a forged key.
// The body is built here from the format described in archive.cpp and sealed independently.

class BodyBuilder {
 public:
  BodyBuilder& U8(std::uint8_t value) {
    bytes.push_back(value);
    return *this;
  }
  BodyBuilder& U32(std::uint32_t value) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<std::uint8_t>(value >> shift));
    return *this;
  }
  BodyBuilder& U64(std::uint64_t value) {
    return U32(static_cast<std::uint32_t>(value >> 32)).U32(static_cast<std::uint32_t>(value));
  }
  BodyBuilder& Raw(std::string_view raw) {
    bytes.insert(bytes.end(), raw.begin(), raw.end());
    return *this;
  }
  BodyBuilder& Text(std::string_view text) { return U32(static_cast<std::uint32_t>(text.size())).Raw(text); }

  std::vector<std::uint8_t> bytes;
};

struct BodyParts {
  std::uint32_t version = 1;
  std::uint8_t kind = 0;
  std::uint32_t count = 1;
  std::string manifest_identity = IdentityOf(9);
  std::string record_identity = IdentityOf(9);
  std::uint8_t by_wrap = 1;
  std::string wrapped = std::string(40, '\x5c');
  std::uint32_t attributes = 2;
  std::string trailer;
};

std::vector<std::uint8_t> BodyOf(const BodyParts& parts) {
  BodyBuilder body;
  body.U32(parts.version).U8(parts.kind).Text("prod-hsm").Text("cluster").Raw("\x01\x23\x45\x67\x89\xab\xcd\xef");
  body.Text("2026-12-02T17:04:05Z").U32(parts.count).Raw(parts.manifest_identity);
  body.Raw(parts.record_identity).U64(CKO_SECRET_KEY).U8(parts.by_wrap).Text(parts.wrapped).U32(parts.attributes);
  body.U64(CKA_LABEL).Text("session key");
  body.U64(CKA_KEY_TYPE).Text(std::string("\x1f\0\0\0\0\0\0\0", 8));
  body.Raw(parts.trailer);
  return body.bytes;
}

// Seals `body` as archive.h describes, with its own scrypt call, under the default passphrase.
std::vector<std::uint8_t> SealBody(std::span<const std::uint8_t> body) {
  std::string passphrase = "correct horse battery staple";
  std::vector<std::uint8_t> file(kHeaderBytes, 0);
  std::string magic = "p11ha-archive v1\n";
  std::copy(magic.begin(), magic.end(), file.begin());
  const std::uint8_t cost[] = {10, 0, 0, 0, 8, 0, 0, 0, 1};
  std::copy(std::begin(cost), std::end(cost), file.begin() + kCostOffset);
  std::fill(file.begin() + kSaltOffset, file.begin() + kNonceOffset, 0x11);
  std::fill(file.begin() + kNonceOffset, file.begin() + kVerifierOffset, 0x22);
  std::vector<std::uint8_t> keys(64);
  REQUIRE(EVP_PBE_scrypt(passphrase.data(), passphrase.size(), &file[kSaltOffset], 16, 1024, 8, 1, 0, keys.data(),
                         keys.size()) == 1);
  std::copy(keys.begin() + 32, keys.end(), file.begin() + kVerifierOffset);

  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  REQUIRE(ctx != nullptr);
  int length = 0;
  std::vector<std::uint8_t> out(body.size() + 16);
  bool ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, keys.data(), &file[kNonceOffset]) == 1 &&
            EVP_EncryptUpdate(ctx, nullptr, &length, file.data(), static_cast<int>(kHeaderBytes)) == 1 &&
            EVP_EncryptUpdate(ctx, out.data(), &length, body.data(), static_cast<int>(body.size())) == 1 &&
            EVP_EncryptFinal_ex(ctx, out.data() + length, &length) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out.data() + body.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  REQUIRE(ok);
  file.insert(file.end(), out.begin(), out.end());
  return file;
}

TEST_CASE("a body built to the documented format opens", "[archive]") {
  Archive opened = OpenArchive(SealBody(BodyOf({})), Passphrase(), kSource);
  REQUIRE(opened.records.size() == 1);
  CHECK(opened.manifest.cluster == "prod-hsm");
  CHECK(CheckValueHex(opened.manifest.domain) == "0123456789abcdef");
  CHECK(opened.records[0].identity == IdentityOf(9));
  CHECK(opened.records[0].plan.object_class == CKO_SECRET_KEY);
  CHECK(opened.records[0].plan.wrapped == std::vector<CK_BYTE>(40, 0x5c));
  REQUIRE(opened.records[0].plan.attributes.size() == 2);
  CHECK(opened.records[0].plan.attributes[0].value == BytesOf("session key"));
}

TEST_CASE("an authentic body that does not parse is malformed", "[archive]") {
  auto outcome = [](const BodyParts& parts) { return OutcomeOf(SealBody(BodyOf(parts))); };
  BodyParts parts;
  SECTION("bytes after the last record") {
    parts.trailer = "x";
    CHECK(outcome(parts) == "malformed");
    CHECK_THAT(MessageOf(SealBody(BodyOf(parts))), Contains(kSource) && Contains("follow the last record"));
  }
  SECTION("an unknown body version") {
    parts.version = 2;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("an unknown kind") {
    parts.kind = 2;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a record count larger than the body") {
    parts.count = 0xffffffff;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("an attribute count larger than the body") {
    parts.attributes = 0x10000000;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("fewer attributes than present leaves trailing bytes") {
    parts.attributes = 1;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a by_wrap flag that is not 0 or 1") {
    parts.by_wrap = 2;
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a secret key that is not wrapped") {
    parts.by_wrap = 0;
    parts.wrapped.clear();
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a wrapped key with no wrapped bytes") {
    parts.wrapped.clear();
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a record whose identity differs from the manifest's") {
    parts.record_identity = IdentityOf(10);
    CHECK(outcome(parts) == "malformed");
  }
  SECTION("a length prefix past the end") {
    std::vector<std::uint8_t> body = BodyOf(parts);
    body[5] = 0xff;  // the high byte of the cluster's length
    CHECK(OutcomeOf(SealBody(body)) == "malformed");
  }
}

TEST_CASE("every truncation or single-byte change of an authentic body is handled", "[archive]") {
  const std::vector<std::uint8_t> body = BodyOf({});
  for (std::size_t length = 0; length < body.size(); ++length) {
    INFO("body length " << length);
    CHECK(OutcomeOf(SealBody(std::span(body).first(length))) == "malformed");
  }
  // A changed byte may still parse (a label's letter); it must never be anything but
  // "opened" or "malformed".
  for (std::size_t i = 0; i < body.size(); ++i) {
    std::vector<std::uint8_t> changed = body;
    changed[i] ^= 0x80;
    std::string outcome = OutcomeOf(SealBody(changed));
    INFO("body byte " << i << ": " << outcome);
    CHECK((outcome == "opened" || outcome == "malformed"));
  }
}

// ---- files ---------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "p11ha-archive-test-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

Kind KindOfFileError(const std::function<void()>& action) {
  try {
    action();
  } catch (const ArchiveError& e) {
    return e.kind();
  }
  FAIL("no ArchiveError");
  return Kind::kMalformed;
}

TEST_CASE("an archive file is written 0600, whole, and read back", "[archive]") {
  TempDir dir;
  std::string path = (dir.path() / "backup.p11ha").string();
  Archive archive = Sample();
  std::vector<std::uint8_t> file = SealArchive(archive, Passphrase(), kFastCost);

  mode_t old_umask = umask(0);  // a permissive umask must not widen the file
  WriteArchiveFile(path, file);
  umask(old_umask);

  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(dir.Entries() == std::vector<std::string>{"backup.p11ha"});
  std::vector<std::uint8_t> read = ReadArchiveFile(path);
  CHECK(read == file);
  CheckSame(OpenArchive(read, Passphrase(), path), archive);
}

TEST_CASE("an existing file is never overwritten", "[archive]") {
  TempDir dir;
  std::string path = (dir.path() / "backup.p11ha").string();
  {
    std::ofstream existing(path, std::ios::binary);
    existing << "keep me";
  }
  std::vector<std::uint8_t> file = SealArchive(Small(), Passphrase(), kFastCost);
  try {
    WriteArchiveFile(path, file);
    FAIL("overwrote " << path);
  } catch (const ArchiveError& e) {
    CHECK(e.kind() == Kind::kUnreadable);
    CHECK_THAT(e.what(), Contains(path) && Contains("already exists"));
  }
  std::vector<std::uint8_t> kept = ReadArchiveFile(path);
  CHECK(std::string(kept.begin(), kept.end()) == "keep me");
  CHECK(dir.Entries() == std::vector<std::string>{"backup.p11ha"});

  // A second archive to the same name is refused the same way, leaving the first intact.
  std::string second = (dir.path() / "second.p11ha").string();
  WriteArchiveFile(second, file);
  CHECK(KindOfFileError([&] { WriteArchiveFile(second, SealArchive(Small(), Passphrase(), kFastCost)); }) ==
        Kind::kUnreadable);
  CHECK(ReadArchiveFile(second) == file);
  CHECK(dir.Entries() == std::vector<std::string>{"backup.p11ha", "second.p11ha"});
}

TEST_CASE("archive file errors name the path", "[archive]") {
  TempDir dir;
  std::string missing = (dir.path() / "missing.p11ha").string();
  try {
    ReadArchiveFile(missing);
    FAIL("read " << missing);
  } catch (const ArchiveError& e) {
    CHECK(e.kind() == Kind::kUnreadable);
    CHECK_THAT(e.what(), Contains(missing) && Contains(std::strerror(ENOENT)));
  }
  CHECK(KindOfFileError([&] { ReadArchiveFile(dir.path().string()); }) == Kind::kUnreadable);

  std::string nowhere = (dir.path() / "no-such-dir" / "backup.p11ha").string();
  std::vector<std::uint8_t> file(10, 1);
  CHECK(KindOfFileError([&] { WriteArchiveFile(nowhere, file); }) == Kind::kUnreadable);
  CHECK(dir.Entries().empty());
}

}  // namespace
}  // namespace p11ha::replication
