// SPDX-License-Identifier: Apache-2.0
#include "replication/archive_transfer.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "tests/unit/fake_token.h"

namespace p11ha::replication {
namespace {

using testing::FakeToken;

constexpr char kDomainSecret[] = "the-domain-key-of-this-cluster!!";
constexpr char kOtherDomainSecret[] = "another-domain-key-another-one!!";

struct Token {
  explicit Token(const std::string& name, const char* domain = kDomainSecret) : fake(name) {
    domain_key = fake.Put(testing::DomainKey(domain));
  }
  ArchiveToken archive_token() { return {&fake, domain_key}; }
  std::size_t Objects() { return fake.Objects().size(); }

  FakeToken fake;
  CK_OBJECT_HANDLE domain_key;
};

std::vector<std::string> IdentitiesOf(Token& token) {
  std::vector<std::string> identities;
  for (const TokenObject& object : ListApplicationObjects(token.archive_token(), "p11ha-domain"))
    identities.push_back(object.summary.identity);
  std::sort(identities.begin(), identities.end());
  return identities;
}

TEST_CASE("collect reads each object once, leaves p11ha's own and keys that cannot leave", "[archive]") {
  Token source("m1"), other("m2");
  source.fake.Put(testing::Certificate("web", "01", "DER-web"));
  source.fake.Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));
  source.fake.Put(testing::Ed25519Key("local", "ed25519-ed25519-ed25519-ed25519!"));
  other.fake.Put(testing::Certificate("web", "01", "DER-web"));
  other.fake.Put(testing::DataObject("notes", "only on m2"));

  std::vector<ArchiveToken> sources{source.archive_token(), other.archive_token()};
  std::size_t reported = 0;
  CollectedObjects collected =
      CollectObjects(sources, "p11ha-domain", {}, [&](std::size_t done, std::size_t) { reported = done; });
  REQUIRE(collected.records.size() == 3);  // web once, k, notes
  CHECK(reported == 3);
  REQUIRE(collected.left_out.size() == 1);
  CHECK(collected.left_out.front().find("\"local\"") != std::string::npos);
  CHECK(collected.left_out.front().find("on m1") != std::string::npos);
  for (const ArchiveRecord& record : collected.records)
    CHECK((record.plan.object_class != CKO_SECRET_KEY || (record.plan.by_wrap && !record.plan.wrapped.empty())));

  SECTION("a filter chooses") {
    CollectedObjects chosen = CollectObjects(
        sources, "p11ha-domain", [](const ObjectSummary& summary) { return summary.label == "k"; }, {});
    REQUIRE(chosen.records.size() == 1);
    CHECK(chosen.records.front().plan.object_class == CKO_SECRET_KEY);
    CHECK(chosen.left_out.empty());
  }
}

TEST_CASE("restore writes every record to every target, and nothing twice", "[archive]") {
  Token source("m1");
  source.fake.Put(testing::Certificate("web", "01", "DER-web"));
  source.fake.Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));
  std::vector<ArchiveToken> sources{source.archive_token()};
  CollectedObjects collected = CollectObjects(sources, "p11ha-domain", {}, {});

  Token a("n1"), b("n2");
  std::vector<ArchiveToken> targets{a.archive_token(), b.archive_token()};
  RestoreResult result = RestoreObjects(collected.records, targets, "p11ha-domain", {});
  CHECK(result.created == 4);
  CHECK(result.already_present == 0);
  CHECK(IdentitiesOf(a) == IdentitiesOf(source));
  CHECK(IdentitiesOf(b) == IdentitiesOf(source));
  CHECK(a.fake.Value(a.fake.Objects(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef")).at(0),
                     CKA_LABEL) == testing::Bytes("k"));

  RestoreResult again = RestoreObjects(collected.records, targets, "p11ha-domain", {});
  CHECK(again.created == 0);
  CHECK(again.already_present == 4);
  CHECK(a.Objects() == 3);  // the domain key and the two restored objects
}

TEST_CASE("a restore that fails removes every object it made, on every target", "[archive]") {
  Token source("m1");
  source.fake.Put(testing::Certificate("web", "01", "DER-web"));
  source.fake.Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));
  std::vector<ArchiveToken> sources{source.archive_token()};
  CollectedObjects collected = CollectObjects(sources, "p11ha-domain", {}, {});
  // The certificate must come first, so that the failure on the key has something to undo.
  std::stable_sort(collected.records.begin(), collected.records.end(),
                   [](const ArchiveRecord& x, const ArchiveRecord& y) {
                     return x.plan.object_class == CKO_CERTIFICATE && y.plan.object_class != CKO_CERTIFICATE;
                   });

  // n2 holds another domain's key: the key's copy there cannot be what the archive holds.
  Token a("n1"), b("n2", kOtherDomainSecret);
  std::vector<ArchiveToken> targets{a.archive_token(), b.archive_token()};
  std::string message;
  try {
    RestoreObjects(collected.records, targets, "p11ha-domain", {});
  } catch (const TransferError& e) {
    message = e.what();
  }
  CHECK(message.find("n2") != std::string::npos);
  CHECK(message.find("every object this run made was removed again") != std::string::npos);
  CHECK(a.Objects() == 1);  // the domain key only
  CHECK(b.Objects() == 1);
}

}  // namespace
}  // namespace p11ha::replication
