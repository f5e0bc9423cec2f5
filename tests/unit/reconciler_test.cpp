// SPDX-License-Identifier: Apache-2.0
#include "replication/reconciler.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "replication/object_identity.h"
#include "replication/tombstone.h"
#include "tests/unit/fake_token.h"

namespace p11ha::replication {
namespace {

using testing::Attributes;
using testing::Bytes;
using testing::FakeToken;

constexpr char kDomainSecret[] = "the-domain-key-of-this-cluster!!";

// A fake token that notes when two threads use it at once, as one member session must never be
// (SoftHSM crashes); its writes take a little while, so that reads elsewhere overlap them.
class ExclusiveToken : public FakeToken {
 public:
  using FakeToken::FakeToken;
  std::atomic<int> shared_uses{0};
  std::atomic<int> calls_while_writing{0};  // calls on any other token during one of these writes

  CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override {
    Use use(*this);
    return FakeToken::GetAttributeValue(object, attributes);
  }
  CK_RV WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                std::vector<CK_BYTE>& wrapped) override {
    Use use(*this);
    return FakeToken::WrapKey(mechanism, wrapping_key, key, wrapped);
  }
  CK_RV UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                  std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) override {
    Use use(*this);
    const int before = others_called.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    calls_while_writing += others_called.load() - before;
    return FakeToken::UnwrapKey(mechanism, unwrapping_key, wrapped, attributes, key);
  }
  CK_RV CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) override {
    Use use(*this);
    return FakeToken::CreateObject(attributes, object);
  }
  CK_RV DestroyObject(CK_OBJECT_HANDLE object) override {
    Use use(*this);
    return FakeToken::DestroyObject(object);
  }
  CK_RV FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) override {
    Use use(*this);
    return FakeToken::FindObjects(match, found);
  }

 private:
  struct Use {
    explicit Use(ExclusiveToken& used) : token(used) {
      if (token.in_use.fetch_add(1) != 0) ++token.shared_uses;
      ++others_called;  // while a write sleeps, only the other thread's calls can count
    }
    ~Use() { token.in_use.fetch_sub(1); }
    ExclusiveToken& token;
  };
  static inline std::atomic<int> others_called{0};
  std::atomic<int> in_use{0};
};

// Members m1..mN of fake tokens that share one domain key.
struct Cluster {
  explicit Cluster(std::size_t size, bool exclusive = false) {
    for (std::size_t i = 0; i < size; ++i) {
      const std::string name = "m" + std::to_string(i + 1);
      tokens.push_back(exclusive ? std::make_unique<ExclusiveToken>(name) : std::make_unique<FakeToken>(name));
      domain_keys.push_back(tokens.back()->Put(testing::DomainKey(kDomainSecret)));
    }
    up.assign(size, true);
  }

  FakeToken& operator[](std::size_t i) { return *tokens[i]; }

  std::optional<std::size_t> rejoining;
  std::function<bool(std::size_t, const std::string&)> claim_copy;
  std::set<std::string> orphans;
  std::vector<OrphanName> orphan_names;
  std::function<bool(std::size_t, const std::string&)> keep_copy;
  bool overlap_copies = false;

  ReconcileReport Run(bool dry_run = false, bool local_keys_expected = false) {
    std::vector<ReconcileMember> members;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      members.push_back({.name = tokens[i]->name(), .token = up[i] ? tokens[i].get() : nullptr,
                         .domain_key = domain_keys[i]});
    }
    ReconcileOptions options;
    options.dry_run = dry_run;
    options.local_keys_expected = local_keys_expected;
    options.configured_members = tokens.size();
    options.log = [this](const std::string& line) { log.push_back(line); };
    options.rejoining = rejoining;
    options.claim_copy = claim_copy;
    options.orphans = orphans;
    options.orphan_names = orphan_names;
    options.keep_copy = keep_copy;
    options.overlap_copies = overlap_copies;
    return Reconcile(members, options);
  }

  std::size_t Count(std::size_t i, const Attributes& match) { return tokens[i]->Objects(match).size(); }

  std::size_t Changes() const {
    std::size_t changes = 0;
    for (const auto& token : tokens) changes += token->changes;
    return changes;
  }

  std::string IdentityOf(std::size_t i, CK_OBJECT_HANDLE handle) {
    ObjectSummary summary;
    REQUIRE(ReadSummary(*tokens[i], handle, domain_keys[i], "p11ha-domain", summary) == CKR_OK);
    return summary.identity;
  }

  std::vector<std::unique_ptr<FakeToken>> tokens;
  std::vector<CK_OBJECT_HANDLE> domain_keys;
  std::vector<bool> up;
  std::vector<std::string> log;
};

std::vector<const DriftEntry*> Entries(const ReconcileReport& report, std::size_t member, DriftKind kind) {
  std::vector<const DriftEntry*> found;
  for (const DriftEntry& entry : report.members.at(member).entries)
    if (entry.kind == kind) found.push_back(&entry);
  return found;
}

Attributes Labelled(const std::string& label) { return {{CKA_LABEL, Bytes(label)}}; }

std::size_t Tombstones(FakeToken& token) {
  std::vector<Tombstone> found;
  REQUIRE(FindTombstones(token, found) == CKR_OK);
  return found.size();
}

TEST_CASE("reconciler: a consistent cluster has no drift and is left alone") {
  Cluster cluster(3);
  for (std::size_t i = 0; i < 3; ++i) {
    cluster[i].Put(testing::Certificate("web", "01", "DER-web"));
    // The same key everywhere; labels are not what identifies it, so the domain key is not "missing".
    cluster[i].Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));
  }
  ReconcileReport report = cluster.Run();
  CHECK_FALSE(report.Drift());
  CHECK(cluster.Changes() == 0);
  for (const MemberReconcileReport& member : report.members) {
    CHECK(member.checked);
    CHECK(member.objects == 2);  // the domain key is p11ha's own and not counted
    CHECK(member.entries.empty());
  }
}

TEST_CASE("reconciler: missing copies are repaired from a holder") {
  Cluster cluster(3);
  cluster[0].Put(testing::Certificate("web", "01", "DER-web"));
  cluster[1].Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));

  ReconcileReport report = cluster.Run();
  CHECK(report.Drift());
  CHECK_FALSE(report.Unresolved());
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(cluster.Count(i, Labelled("web")) == 1);
    REQUIRE(cluster.Count(i, Labelled("k")) == 1);
    // The key went by wrap and unwrap: the copy holds the same secret.
    CK_OBJECT_HANDLE key = cluster[i].Objects(Labelled("k")).front();
    CHECK(cluster[i].Value(key, CKA_VALUE) == Bytes("0123456789abcdef0123456789abcdef"));
  }
  auto missing = Entries(report, 1, DriftKind::kMissing);
  REQUIRE(missing.size() == 1);
  CHECK(missing[0]->object == "certificate \"web\" id 3031");
  CHECK(missing[0]->action == "copy it from m1");
  CHECK(missing[0]->state == ActionState::kDone);
  CHECK(Entries(report, 0, DriftKind::kMissing).size() == 1);  // the key, from m2
  CHECK_FALSE(cluster.log.empty());

  CHECK_FALSE(cluster.Run().Drift());
}

TEST_CASE("reconciler: a rejoin writes the rejoining member only") {
  Cluster cluster(3);
  cluster.rejoining = 2;
  // Between the serving members m1 and m2, a fan-out or a deletion may be under way.
  cluster[0].Put(testing::Certificate("in-flight", "01", "DER-a"));
  // The rejoining m3 alone holds this one: the others may have just deleted it.
  cluster[2].Put(testing::Certificate("only-m3", "02", "DER-b"));
  // Both serving members hold this one, and m3 lacks it: it goes to m3.
  for (std::size_t i = 0; i < 2; ++i) cluster[i].Put(testing::Certificate("both", "03", "DER-c"));
  // m3 lacks this one too, but the fan-out of a new object has claimed that copy.
  for (std::size_t i = 0; i < 2; ++i) cluster[i].Put(testing::Certificate("fanned-out", "04", "DER-d"));
  std::vector<std::pair<std::size_t, std::string>> asked;
  cluster.claim_copy = [&](std::size_t member, const std::string& identity) {
    asked.emplace_back(member, identity);
    return identity != cluster.IdentityOf(0, cluster[0].Objects(Labelled("fanned-out")).front());
  };
  cluster.Run();
  CHECK(cluster.Count(1, Labelled("in-flight")) == 0);
  CHECK(cluster.Count(2, Labelled("in-flight")) == 1);
  CHECK(cluster.Count(0, Labelled("only-m3")) == 0);
  CHECK(cluster.Count(1, Labelled("only-m3")) == 0);
  CHECK(cluster.Count(2, Labelled("only-m3")) == 1);
  CHECK(cluster.Count(2, Labelled("both")) == 1);
  CHECK(cluster.Count(2, Labelled("fanned-out")) == 0);
  CHECK(asked.size() == 3);  // in-flight, both and fanned-out, each to m3
}

TEST_CASE("reconciler: a rejoin destroys the orphans of failed creations, unless another member holds them") {
  Cluster cluster(3);
  cluster.rejoining = 0;
  CK_OBJECT_HANDLE orphan = cluster[0].Put(testing::SecretKey("k", "01", "orphan-orphan-orphan-orphan-0001"));
  CK_OBJECT_HANDLE shared = cluster[0].Put(testing::SecretKey("s", "02", "shared-shared-shared-shared-0002"));
  cluster[1].Put(testing::SecretKey("s", "02", "shared-shared-shared-shared-0002"));
  cluster.orphans = {cluster.IdentityOf(0, orphan), cluster.IdentityOf(0, shared)};
  ReconcileReport report = cluster.Run();
  CHECK(cluster.Count(0, Labelled("k")) == 0);
  CHECK(cluster.Count(0, Labelled("s")) == 1);
  auto removed = Entries(report, 0, DriftKind::kOrphan);
  REQUIRE(removed.size() == 1);
  CHECK(removed[0]->state == ActionState::kDone);
  CHECK(std::string(DriftKindName(DriftKind::kOrphan)) == "orphan");
}

OrphanName SecretNamed(const std::string& label, std::optional<std::string> id) {
  OrphanName name{.object_class = CKO_SECRET_KEY, .label = label};
  if (id) name.id = Bytes(*id);
  return name;
}

TEST_CASE("reconciler: a rejoin destroys by name what a failed creation left unseen, and nothing it may not") {
  Cluster cluster(3);
  cluster.rejoining = 0;
  // The creation failed on m1 before p11ha saw its key; the retry made another on m2, copied to m3.
  // Listed twice, as SoftHSM does while objects are created: still one object, not two.
  cluster[0].ListTwice(cluster[0].Put(testing::SecretKey("k", "01", "orphan-orphan-orphan-orphan-0001")));
  for (std::size_t i = 1; i < 3; ++i) cluster[i].Put(testing::SecretKey("k", "01", "retried-retried-retried-retr-01"));
  // Alike but held by another member: an object in use, whatever its name.
  cluster[0].Put(testing::SecretKey("s", "02", "shared-shared-shared-shared-0002"));
  cluster[1].Put(testing::SecretKey("s", "02", "shared-shared-shared-shared-0002"));
  // Two alike on m1 alone, where one failed creation can have made one only.
  cluster[0].Put(testing::SecretKey("twice", "03", "first-first-first-first-first-03"));
  cluster[0].Put(testing::SecretKey("twice", "03", "second-second-second-second-s-03"));
  // A key that can live on one member only may be the application's own.
  cluster[0].Put(testing::Ed25519Key("local", "ed25519-ed25519-ed25519-ed25519!"));
  cluster.orphan_names = {SecretNamed("k", "01"), SecretNamed("s", "02"), SecretNamed("twice", "03"),
                          {.label = "local"}};
  ReconcileReport report = cluster.Run(/*dry_run=*/false, /*local_keys_expected=*/true);

  // m1 now holds the application's key only, copied from the others.
  REQUIRE(cluster.Count(0, Labelled("k")) == 1);
  CHECK(cluster[0].Value(cluster[0].Objects(Labelled("k")).front(), CKA_VALUE) ==
        Bytes("retried-retried-retried-retr-01"));
  CHECK(cluster.Count(0, Labelled("s")) == 1);
  CHECK(cluster.Count(0, Labelled("twice")) == 2);
  CHECK(cluster.Count(0, Labelled("local")) == 1);
  std::size_t removed = 0, left = 0;
  for (const DriftEntry* entry : Entries(report, 0, DriftKind::kOrphan)) {
    if (entry->object.find("\"k\"") != std::string::npos) {
      CHECK(entry->state == ActionState::kDone);  // once per handle it was listed under
      ++removed;
    } else {
      CHECK(entry->object.find("\"twice\"") != std::string::npos);
      CHECK(entry->state == ActionState::kNone);
      CHECK(entry->Unresolved());
      ++left;
    }
  }
  CHECK(removed == 2);
  CHECK(left == 1);
  CHECK(Entries(report, 0, DriftKind::kConflict).empty());
}

TEST_CASE("reconciler: a copy the application deleted while it was made is removed again") {
  Cluster cluster(2);
  cluster.rejoining = 1;
  cluster[0].Put(testing::Certificate("deleted", "01", "DER-deleted"));
  cluster[0].Put(testing::Certificate("kept", "02", "DER-kept"));
  const std::string deleted = cluster.IdentityOf(0, cluster[0].Objects(Labelled("deleted")).front());
  std::vector<std::string> asked;
  cluster.keep_copy = [&](std::size_t member, const std::string& identity) {
    CHECK(member == 1);
    asked.push_back(identity);
    return identity != deleted;
  };
  ReconcileReport report = cluster.Run();
  CHECK(asked.size() == 2);
  CHECK(cluster.Count(1, Labelled("deleted")) == 0);
  CHECK(cluster.Count(1, Labelled("kept")) == 1);
  auto missing = Entries(report, 1, DriftKind::kMissing);
  REQUIRE(missing.size() == 2);
  for (const DriftEntry* entry : missing) {
    const bool was_deleted = entry->object.find("\"deleted\"") != std::string::npos;
    CHECK(entry->Unresolved() == false);
    CHECK(entry->drift == !was_deleted);
  }
}

TEST_CASE("reconciler: a tombstone deletes everywhere, spreads while a member is down, then retires") {
  Cluster cluster(3);
  std::vector<CK_OBJECT_HANDLE> certs;
  for (std::size_t i = 0; i < 3; ++i) certs.push_back(cluster[i].Put(testing::Certificate("old", "09", "DER-old")));
  const std::string identity = cluster.IdentityOf(0, certs[0]);
  // An application deleted it while m3 was unreachable: m1 and m2 dropped it, m1 wrote a tombstone.
  REQUIRE(cluster[0].DestroyObject(certs[0]) == CKR_OK);
  REQUIRE(cluster[1].DestroyObject(certs[1]) == CKR_OK);
  CK_OBJECT_HANDLE tombstone = CK_INVALID_HANDLE;
  REQUIRE(CreateTombstone(cluster[0], identity, true, tombstone) == CKR_OK);

  SECTION("m3 still down: the tombstone spreads to m2 and stays; the object is not copied back") {
    cluster.up[2] = false;
    ReconcileReport report = cluster.Run();
    CHECK(report.Unresolved());  // m3 could not be checked
    CHECK(Entries(report, 2, DriftKind::kMemberDown).size() == 1);
    CHECK(Entries(report, 1, DriftKind::kTombstoneMissing).size() == 1);
    CHECK(Tombstones(cluster[0]) == 1);
    CHECK(Tombstones(cluster[1]) == 1);
    CHECK(cluster.Count(0, Labelled("old")) == 0);
    CHECK(cluster.Count(1, Labelled("old")) == 0);

    // m3 returns: its copy goes, and with every member checked the tombstones retire.
    cluster.up[2] = true;
    report = cluster.Run();
    auto deleted = Entries(report, 2, DriftKind::kDeleted);
    REQUIRE(deleted.size() == 1);
    CHECK(deleted[0]->state == ActionState::kDone);
    CHECK(cluster.Count(2, Labelled("old")) == 0);
    CHECK(Entries(report, 0, DriftKind::kTombstoneRetired).size() == 1);
    CHECK(Entries(report, 1, DriftKind::kTombstoneRetired).size() == 1);
    for (std::size_t i = 0; i < 3; ++i) CHECK(Tombstones(cluster[i]) == 0);
    CHECK_FALSE(report.Unresolved());
    CHECK_FALSE(cluster.Run().Drift());
  }

  SECTION("every member up: deleted on m3 and retired in one run") {
    ReconcileReport report = cluster.Run();
    CHECK(cluster.Count(2, Labelled("old")) == 0);
    for (std::size_t i = 0; i < 3; ++i) CHECK(Tombstones(cluster[i]) == 0);
    CHECK(Entries(report, 2, DriftKind::kMissing).empty());
    CHECK_FALSE(report.Unresolved());
  }
}

TEST_CASE("reconciler: duplicates go only while another copy remains") {
  Cluster cluster(3);
  cluster[0].Put(testing::Certificate("twice", "03", "DER-twice"));
  cluster[0].Put(testing::Certificate("twice", "03", "DER-twice"));

  SECTION("the others are down: nothing is removed") {
    cluster.up[1] = cluster.up[2] = false;
    ReconcileReport report = cluster.Run();
    CHECK(cluster.Count(0, Labelled("twice")) == 2);
    auto duplicate = Entries(report, 0, DriftKind::kDuplicate);
    REQUIRE(duplicate.size() == 1);
    CHECK(duplicate[0]->state == ActionState::kNone);
    CHECK(report.Unresolved());
  }

  SECTION("the others are up: copied to them first, then the extra goes") {
    ReconcileReport report = cluster.Run();
    for (std::size_t i = 0; i < 3; ++i) CHECK(cluster.Count(i, Labelled("twice")) == 1);
    auto duplicate = Entries(report, 0, DriftKind::kDuplicate);
    REQUIRE(duplicate.size() == 1);
    CHECK(duplicate[0]->state == ActionState::kDone);
    CHECK_FALSE(cluster.Run().Drift());
  }
}

TEST_CASE("reconciler: one object listed twice is not lost by removing 'the duplicate'") {
  Cluster cluster(3);
  CK_OBJECT_HANDLE cert = CK_INVALID_HANDLE;
  for (std::size_t i = 0; i < 3; ++i) {
    CK_OBJECT_HANDLE handle = cluster[i].Put(testing::Certificate("ca", "04", "DER-ca"));
    if (i == 0) cert = handle;
  }
  cluster[0].ListTwice(cert);

  SECTION("another member holds it: the copy removed by mistake is put back") {
    ReconcileReport report = cluster.Run();
    CHECK(cluster.Count(0, Labelled("ca")) == 1);
    auto duplicate = Entries(report, 0, DriftKind::kDuplicate);
    REQUIRE(duplicate.size() == 1);
    CHECK(duplicate[0]->state == ActionState::kDone);
    CHECK_THAT(duplicate[0]->detail, Catch::Contains("copied back from m2"));
  }

  SECTION("listed twice and truly duplicated: one copy stays") {
    cluster[0].Put(testing::Certificate("ca", "04", "DER-ca"));
    cluster.Run();
    CHECK(cluster.Count(0, Labelled("ca")) == 1);
    CHECK_FALSE(cluster.Run().Drift());
  }

  SECTION("no other member holds it: nothing is destroyed") {
    REQUIRE(cluster[1].DestroyObject(cluster[1].Objects(Labelled("ca")).front()) == CKR_OK);
    REQUIRE(cluster[2].DestroyObject(cluster[2].Objects(Labelled("ca")).front()) == CKR_OK);
    cluster.up[1] = cluster.up[2] = false;
    cluster.Run();
    CHECK(cluster.Count(0, Labelled("ca")) == 1);
  }
}

TEST_CASE("reconciler: same class, label and id but a different object is a conflict, not repaired") {
  Cluster cluster(3);
  cluster[0].Put(testing::Certificate("web", "05", "DER-web-2024"));
  cluster[1].Put(testing::Certificate("web", "05", "DER-web-2024"));
  cluster[2].Put(testing::Certificate("web", "05", "DER-web-2025"));

  ReconcileReport report = cluster.Run();
  CHECK(report.Unresolved());
  for (std::size_t i = 0; i < 3; ++i) {
    auto conflict = Entries(report, i, DriftKind::kConflict);
    REQUIRE(conflict.size() == 1);
    CHECK(conflict[0]->state == ActionState::kNone);
    CHECK(cluster.Count(i, Labelled("web")) == 1);
  }
  CHECK_THAT(Entries(report, 2, DriftKind::kConflict)[0]->detail, Catch::Contains("on m1, m2"));
  CHECK(Entries(report, 2, DriftKind::kMissing).empty());
  CHECK(cluster.Changes() == 0);
}

TEST_CASE("reconciler: keys that cannot leave their member are local, never copied; drift unless policy local") {
  Cluster cluster(2);
  cluster[0].Put(testing::SecretKey("kept", "06", "fedcba9876543210fedcba9876543210", false));
  cluster[1].Put(testing::Ed25519Key("ed", "ed25519-secret-bytes"));

  for (bool expected : {true, false}) {
    ReconcileReport report = cluster.Run(/*dry_run=*/false, /*local_keys_expected=*/expected);
    CHECK(report.Drift() == !expected);
    CHECK(cluster.Changes() == 0);
    CHECK(cluster.Count(1, Labelled("kept")) == 0);
    CHECK(cluster.Count(0, Labelled("ed")) == 0);
    auto local = Entries(report, 0, DriftKind::kLocal);
    REQUIRE(local.size() == 1);
    CHECK(local[0]->drift == !expected);
    CHECK(Entries(report, 1, DriftKind::kLocal).size() == 1);
  }
}

TEST_CASE("reconciler: a dry run reports and plans but changes nothing") {
  Cluster cluster(3);
  cluster[0].Put(testing::Certificate("only-m1", "07", "DER-only"));
  cluster[1].Put(testing::DataObject("twice", "v"));
  cluster[1].Put(testing::DataObject("twice", "v"));
  CK_OBJECT_HANDLE old = cluster[2].Put(testing::Certificate("old", "08", "DER-old"));
  CK_OBJECT_HANDLE tombstone = CK_INVALID_HANDLE;
  REQUIRE(CreateTombstone(cluster[0], cluster.IdentityOf(2, old), true, tombstone) == CKR_OK);
  cluster[0].changes = 0;

  ReconcileReport report = cluster.Run(/*dry_run=*/true);
  CHECK(report.dry_run);
  CHECK(report.Drift());
  CHECK(report.Unresolved());
  CHECK(cluster.Changes() == 0);
  auto missing = Entries(report, 1, DriftKind::kMissing);
  REQUIRE_FALSE(missing.empty());
  CHECK(missing[0]->state == ActionState::kPlanned);
  CHECK(Entries(report, 2, DriftKind::kDeleted).at(0)->state == ActionState::kPlanned);
  CHECK(Entries(report, 1, DriftKind::kDuplicate).at(0)->state == ActionState::kPlanned);
  CHECK(Entries(report, 0, DriftKind::kTombstoneRetired).at(0)->state == ActionState::kPlanned);
  for (const std::string& line : cluster.log) CHECK_THAT(line, Catch::EndsWith("(dry run)"));

  // The same cluster, repaired for real, then clean.
  CHECK_FALSE(cluster.Run().Unresolved());
  CHECK_FALSE(cluster.Run().Drift());
  CHECK(cluster.Count(2, Labelled("old")) == 0);
}

TEST_CASE("reconciler: an object destroyed by another process between find and read is skipped") {
  Cluster cluster(2);
  CK_OBJECT_HANDLE gone = cluster[0].Put(testing::Certificate("gone", "0a", "DER-gone"));
  cluster[0].Put(testing::Certificate("stays", "0b", "DER-stays"));
  cluster[0].after_find = [&cluster, gone] {
    cluster[0].DestroyObject(gone);
    cluster[0].after_find = nullptr;
  };
  ReconcileReport report = cluster.Run();
  CHECK(Entries(report, 0, DriftKind::kUnchecked).empty());
  CHECK(cluster.Count(1, Labelled("gone")) == 0);
  CHECK(cluster.Count(1, Labelled("stays")) == 1);
}

TEST_CASE("reconciler: an object its holder deleted after the scan is no drift and no copy") {
  Cluster cluster(2);
  CK_OBJECT_HANDLE cert = cluster[0].Put(testing::Certificate("deleted", "0c", "DER-deleted"));
  // m1 was scanned; while m2 is, an application deletes the object on m1.
  cluster[1].after_find = [&cluster, cert] {
    cluster[0].DestroyObject(cert);
    cluster[1].after_find = nullptr;
  };
  ReconcileReport report = cluster.Run();
  CHECK(cluster.Count(1, Labelled("deleted")) == 0);
  auto missing = Entries(report, 1, DriftKind::kMissing);
  REQUIRE(missing.size() == 1);
  CHECK_FALSE(missing[0]->drift);
  CHECK(missing[0]->state == ActionState::kNone);
  CHECK_FALSE(report.Drift());
}

TEST_CASE("reconciler: copies of an object deleted on every holder during the copy are removed again") {
  Cluster cluster(2);
  CK_OBJECT_HANDLE cert = cluster[0].Put(testing::Certificate("revoked", "0f", "DER-revoked"));
  // An application's C_DestroyObject reaches m1 while the copy to m2 is being made.
  cluster[1].after_create = [&cluster, cert] {
    cluster[0].DestroyObject(cert);
    cluster[1].after_create = nullptr;
  };
  ReconcileReport report = cluster.Run();
  CHECK(cluster.Count(1, Labelled("revoked")) == 0);
  auto missing = Entries(report, 1, DriftKind::kMissing);
  REQUIRE(missing.size() == 1);
  CHECK(missing[0]->state == ActionState::kFailed);
  CHECK_THAT(missing[0]->error, Catch::Contains("deleted on every holder"));
  CHECK_FALSE(cluster.Run().Drift());
}

TEST_CASE("reconciler: members without the cluster's domain key take no key copies") {
  Cluster cluster(3);
  cluster[0].Put(testing::SecretKey("k", "0c", "0123456789abcdef0123456789abcdef"));
  cluster[0].Put(testing::Certificate("c", "0d", "DER-c"));
  cluster.domain_keys[1] = CK_INVALID_HANDLE;  // m2: no domain key yet

  std::vector<ReconcileMember> members = {
      {.name = "m1", .token = &cluster[0], .domain_key = cluster.domain_keys[0]},
      {.name = "m2", .token = &cluster[1], .domain_key = CK_INVALID_HANDLE},
      {.name = "m3", .token = &cluster[2], .foreign_domain = true, .note = "holds domain key 1111"}};
  ReconcileOptions options;
  options.configured_members = 3;
  ReconcileReport report = Reconcile(members, options);

  CHECK(report.Unresolved());
  CHECK(cluster.Count(1, Labelled("k")) == 0);
  CHECK(cluster.Count(1, Labelled("c")) == 1);  // public objects still travel
  CHECK(Entries(report, 1, DriftKind::kNoDomainKey).size() == 1);
  CHECK(Entries(report, 2, DriftKind::kForeignDomain).size() == 1);
  CHECK_FALSE(report.members[2].checked);
  CHECK(cluster[2].changes == 0);
  CHECK(cluster.Count(2, Labelled("c")) == 0);
}

TEST_CASE("reconciler: a stale CKA_LABEL is repaired from the majority") {
  Cluster cluster(3);
  for (std::size_t i = 0; i < 3; ++i)
    cluster[i].Put(testing::SecretKey(i == 2 ? "before" : "after", "0e", "0123456789abcdef0123456789abcdef"));
  ReconcileReport report = cluster.Run();
  auto differ = Entries(report, 2, DriftKind::kAttributesDiffer);
  REQUIRE(differ.size() == 1);
  CHECK(differ[0]->state == ActionState::kDone);
  CHECK(cluster.Count(2, Labelled("after")) == 1);
  CHECK_FALSE(cluster.Run().Drift());
}

}  // namespace
}  // namespace p11ha::replication

namespace p11ha::replication {
namespace {

TEST_CASE("reconciler: the next source is read while a target writes, never two calls on one token at once") {
  Cluster cluster(3, /*exclusive=*/true);
  cluster.overlap_copies = true;
  // Copies in every direction: runs of keys from one member, then objects going the other way,
  // where reading ahead would use a token the current copy writes.
  for (int i = 0; i < 6; ++i)
    cluster[0].Put(
        testing::SecretKey("a" + std::to_string(i), "1" + std::to_string(i), std::string(32, char('a' + i))));
  cluster[1].Put(testing::SecretKey("b", "20", std::string(32, 'B')));
  cluster[2].Put(testing::Certificate("c", "30", "DER-c"));
  cluster[0].Put(testing::SecretKey("a-last", "19", std::string(32, 'z')));

  ReconcileReport report = cluster.Run();
  CHECK_FALSE(report.Unresolved());
  int overlapped = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    auto& token = static_cast<ExclusiveToken&>(cluster[i]);
    CHECK(token.shared_uses == 0);
    overlapped += token.calls_while_writing;
    for (int k = 0; k < 6; ++k) {
      const std::string label = "a" + std::to_string(k);
      REQUIRE(cluster.Count(i, Labelled(label)) == 1);
      CHECK(cluster[i].Value(cluster[i].Objects(Labelled(label)).front(), CKA_VALUE) ==
            Bytes(std::string(32, char('a' + k))));
    }
    CHECK(cluster.Count(i, Labelled("b")) == 1);
    CHECK(cluster.Count(i, Labelled("c")) == 1);
    CHECK(cluster.Count(i, Labelled("a-last")) == 1);
  }
  CHECK(overlapped > 0);  // some source was read while a copy was written
  CHECK_FALSE(cluster.Run().Drift());
}

}  // namespace
}  // namespace p11ha::replication
