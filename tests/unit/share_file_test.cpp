// SPDX-License-Identifier: Apache-2.0
#include "replication/share_file.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "replication/domain_key.h"

namespace p11ha::replication {
namespace {

using Catch::Matchers::Contains;

SecureBytes KeyOf(std::uint8_t first) {
  std::vector<std::uint8_t> bytes(kDomainKeyBytes);
  std::iota(bytes.begin(), bytes.end(), first);
  return SecureBytes(bytes);
}

ShareFile Sample() {
  ShareFile share;
  share.domain = *ParseCheckValueHex("0123456789abcdef");
  share.threshold = 3;
  share.shares = 5;
  share.index = 2;
  std::vector<std::uint8_t> data(32, 0x5a);
  share.data = SecureBytes(data);
  return share;
}

std::string ErrorOf(const std::string& text) {
  try {
    ParseShareFile(text, "custodian.share");
  } catch (const ShareFileError& e) {
    CHECK(e.kind() == ShareFileError::Kind::kInvalid);
    return e.what();
  }
  FAIL("parsed: " << text);
  return "";
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "p11ha-share-test-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST_CASE("a share file round-trips") {
  std::string text = FormatShareFile(Sample());
  CHECK(text.rfind("p11ha-domain-share v1\ndomain 0123456789abcdef\nthreshold 3\nshares 5\nindex 2\ndata 5a5a", 0) == 0);
  ShareFile share = ParseShareFile(text, "x");
  CHECK(CheckValueHex(share.domain) == "0123456789abcdef");
  CHECK(share.threshold == 3);
  CHECK(share.shares == 5);
  CHECK(share.index == 2);
  CHECK(share.data.Equals(std::vector<std::uint8_t>(32, 0x5a)));
  CHECK(share.source == "x");
}

TEST_CASE("any changed character is caught by the checksum") {
  const std::string text = FormatShareFile(Sample());
  std::size_t data = text.find("data ") + 5;
  for (std::size_t pos : {data, data + 17, text.find("domain ") + 7, text.find("checksum ") + 20}) {
    std::string damaged = text;
    damaged[pos] = damaged[pos] == '0' ? '1' : '0';
    CHECK_THAT(ErrorOf(damaged), Contains("custodian.share: checksum does not match"));
  }
  std::string threshold = text;
  threshold[threshold.find("threshold 3") + 10] = '2';
  CHECK_THAT(ErrorOf(threshold), Contains("checksum"));
}

TEST_CASE("structural errors name the file and the line") {
  const std::string text = FormatShareFile(Sample());
  CHECK_THAT(ErrorOf("hello\n"), Contains("custodian.share: line 1: not a p11ha domain share"));
  CHECK_THAT(ErrorOf(text.substr(0, text.find("index"))), Contains("line 5: missing 'index' line"));
  std::string swapped = text;
  swapped.replace(swapped.find("shares 5"), 8, "Shares 5");
  CHECK_THAT(ErrorOf(swapped), Contains("line 4: expected 'shares ...'"));
  CHECK_THAT(ErrorOf(text + "more\n"), Contains("unexpected text after the checksum"));
  CHECK_THAT(ErrorOf(""), Contains("line 1"));
}

TEST_CASE("values are checked after the checksum") {
  // A well-sealed file with impossible values (as a buggy or hostile writer could produce).
  auto sealed = [](unsigned threshold, unsigned shares, unsigned index) {
    ShareFile share = Sample();
    share.threshold = threshold;
    share.shares = shares;
    share.index = index;
    return FormatShareFile(share);
  };
  CHECK_THAT(ErrorOf(sealed(0, 5, 1)), Contains("line 3: 'threshold' must be a number from 1 to 255"));
  CHECK_THAT(ErrorOf(sealed(4, 3, 1)), Contains("line 4: 'shares' must be a number from 4 to 255"));
  CHECK_THAT(ErrorOf(sealed(3, 5, 6)), Contains("line 5: 'index' must be a number from 1 to 5"));
}

TEST_CASE("share files are written 0600, never overwritten, and read back") {
  TempDir dir;
  std::string path = (dir.path() / "share-2").string();
  ::umask(022);
  WriteShareFile(path, Sample());
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_THROWS_AS(WriteShareFile(path, Sample()), ShareFileError);

  ShareFile share = ReadShareFile(path);
  CHECK(share.index == 2);
  CHECK(share.source == path);
  CHECK_FALSE(share.readable_by_others);
  chmod(path.c_str(), 0644);
  CHECK(ReadShareFile(path).readable_by_others);

  try {
    ReadShareFile((dir.path() / "missing").string());
    FAIL("read a missing file");
  } catch (const ShareFileError& e) {
    CHECK(e.kind() == ShareFileError::Kind::kUnreadable);
    CHECK_THAT(e.what(), Contains("missing: cannot read"));
  }
}

TEST_CASE("the domain check value is the RFC 5649 wrap of a zero probe, hashed") {
  // Computed independently with Python cryptography's aes_key_wrap_with_padding and SHA-256.
  std::vector<std::uint8_t> zero(kDomainKeyBytes);
  CHECK(CheckValueHex(ComputeCheckValue(SecureBytes(zero))) == "ce0369e0246ea662");
  CHECK(CheckValueHex(ComputeCheckValue(KeyOf(0))) == "fcddeb4317cd6e06");
}

TEST_CASE("a domain key is rebuilt from any threshold of its share files") {
  SecureBytes key = KeyOf(7);
  std::vector<ShareFile> files = SplitDomainKey(key, 3, 5);
  REQUIRE(files.size() == 5);
  for (ShareFile& file : files) file.source = "share-" + std::to_string(file.index);

  auto pick = [&files](std::vector<std::size_t> which) {
    std::vector<ShareFile> picked;
    for (std::size_t i : which) picked.push_back(ParseShareFile(FormatShareFile(files[i]), files[i].source));
    return picked;
  };
  CheckValue domain{};
  SecureBytes rebuilt = RecoverDomainKey(pick({1, 3, 4}), domain);
  CHECK(rebuilt.Equals(std::span<const std::uint8_t>(key.data(), key.size())));
  CHECK(domain == ComputeCheckValue(key));

  CHECK_THROWS_WITH(RecoverDomainKey(pick({1, 3}), domain), Contains("too few shares") && Contains("needs 3"));
  CHECK_THROWS_WITH(RecoverDomainKey(pick({1, 3, 3}), domain), Contains("share-4 is share 4 again"));

  std::vector<ShareFile> foreign = SplitDomainKey(KeyOf(9), 3, 5);
  std::vector<ShareFile> mixed = pick({0, 1});
  foreign[2].source = "other/share-3";
  mixed.push_back(std::move(foreign[2]));
  CHECK_THROWS_WITH(RecoverDomainKey(mixed, domain), Contains("other/share-3 is a share of another domain"));

  // A forged share with a valid checksum and the right domain line: only the rebuilt key's
  // check value can tell.
  std::vector<ShareFile> forged = pick({0, 1, 2});
  forged[2].data.data()[0] ^= 1;
  CHECK_THROWS_WITH(RecoverDomainKey(forged, domain), Contains("do not rebuild domain"));
  CHECK_THROWS_AS(RecoverDomainKey(forged, domain), DomainRefusal);
}

}  // namespace
}  // namespace p11ha::replication
