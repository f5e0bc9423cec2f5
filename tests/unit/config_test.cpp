// SPDX-License-Identifier: Apache-2.0
#include "config/config.h"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>

namespace p11ha::config {
namespace {

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

constexpr const char* kMember = R"(
[[member]]
name = "a"
module = "/m.so"
token = "pkcs11:token=t"
)";

std::string ErrorOf(const std::string& text, const std::string& path = "test.toml") {
  try {
    ParseConfig(text, path);
  } catch (const ConfigError& error) {
    return error.what();
  }
  FAIL("expected a ConfigError for:\n" << text);
  return {};
}

// A scratch directory removed at the end of each test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "p11ha-config-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string Write(const std::string& name, const std::string& content) const {
    std::string file = (path_ / name).string();
    std::ofstream out(file, std::ios::binary);
    out << content;
    return file;
  }
  std::string Path(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Sets or unsets an environment variable for one test and restores it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST_CASE("config: every key of the design example round-trips", "[unit][config]") {
  const Config config = ParseConfig(R"(
[cluster]
label = "ha-demo"
slot_id = 7

[[member]]
name = "hsm-a"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "pkcs11:token=m1"
standby = false
weight = 3

[[member]]
name = "hsm-b"
remote = "unix:path=/run/p11ha/hsm-b.sock"
token = "pkcs11:token=m2"
standby = true

[[member]]
name = "hsm-c"
remote = "unix:path=/run/p11ha/hsm-c.sock"

[auth]
pin_file = "/etc/p11ha/pin"

[replication]
domain_key_label = "my-domain"
quorum = "all"
non_extractable = "refuse"

[balancing]
policy = "round-robin"

[health]
probe_interval_ms = 250
call_timeout_ms = 600000
replay_limit_bytes = 4096

[catalog]
max_age_ms = 0

[log]
level = "debug"
file = "/var/log/p11ha.log"
)",
                                    "/etc/p11ha/p11ha.toml");

  CHECK(config.source_path == "/etc/p11ha/p11ha.toml");
  CHECK(config.cluster_label == "ha-demo");
  CHECK(config.slot_id == 7);
  REQUIRE(config.members.size() == 3);
  CHECK(config.members[0].name == "hsm-a");
  CHECK(config.members[0].module == "/usr/lib/softhsm/libsofthsm2.so");
  CHECK(config.members[0].token == "pkcs11:token=m1");
  CHECK(config.members[0].remote.empty());
  CHECK_FALSE(config.members[0].standby);
  CHECK(config.members[0].weight == 3);
  CHECK(config.members[1].name == "hsm-b");
  CHECK(config.members[1].module.empty());
  CHECK(config.members[1].remote == "unix:path=/run/p11ha/hsm-b.sock");
  CHECK(config.members[1].token == "pkcs11:token=m2");
  CHECK(config.members[1].standby);
  CHECK(config.members[1].weight == 1);
  CHECK(config.members[2].name == "hsm-c");
  CHECK(config.members[2].token == "pkcs11:");  // a remote without a token matches any token
  CHECK(config.pin_file == "/etc/p11ha/pin");
  CHECK(config.domain_key_label == "my-domain");
  CHECK(config.quorum.kind == Quorum::Kind::kAll);
  CHECK(config.non_extractable == NonExtractablePolicy::kRefuse);
  CHECK(config.balancing == BalancingPolicy::kRoundRobin);
  CHECK(config.probe_interval_ms == 250);
  CHECK(config.call_timeout_ms == 600000);
  CHECK(config.replay_limit_bytes == 4096);
  CHECK(config.catalog_max_age_ms == 0);
  CHECK(config.log_level == "debug");
  CHECK(config.log_file == "/var/log/p11ha.log");
}

TEST_CASE("config: defaults apply to everything but the members", "[unit][config]") {
  const Config config = ParseConfig(kMember, "min.toml");
  CHECK(config.cluster_label == "p11ha");
  CHECK(config.slot_id == 0);
  REQUIRE(config.members.size() == 1);
  CHECK_FALSE(config.members[0].standby);
  CHECK(config.members[0].weight == 1);
  CHECK(config.pin_file.empty());
  CHECK(config.domain_key_label == "p11ha-domain");
  CHECK(config.quorum.kind == Quorum::Kind::kMajority);
  CHECK(config.non_extractable == NonExtractablePolicy::kTrustedWrap);
  CHECK(config.balancing == BalancingPolicy::kLeastBusy);
  CHECK(config.probe_interval_ms == 1000);
  CHECK(config.call_timeout_ms == 2000);
  CHECK(config.catalog_max_age_ms == 2000);
  CHECK(config.log_level == "warn");
  CHECK(config.log_file.empty());

  // Empty sections are the same as absent ones.
  const Config empty_sections = ParseConfig(
      std::string("[cluster]\n[auth]\n[replication]\n[balancing]\n[health]\n[log]\n") + kMember,
      "min.toml");
  CHECK(empty_sections.cluster_label == "p11ha");
  CHECK(empty_sections.probe_interval_ms == 1000);
}

TEST_CASE("config: every enumerated value is accepted", "[unit][config]") {
  auto with = [](const std::string& section) {
    return ParseConfig(std::string(kMember) + section, "e.toml");
  };
  CHECK(with("[replication]\nquorum = \"majority\"").quorum.kind == Quorum::Kind::kMajority);
  const Config count = with("[replication]\nquorum = 1");
  CHECK(count.quorum.kind == Quorum::Kind::kCount);
  CHECK(count.quorum.count == 1);
  CHECK(with("[replication]\nnon_extractable = \"trusted-wrap\"").non_extractable ==
        NonExtractablePolicy::kTrustedWrap);
  CHECK(with("[replication]\nnon_extractable = \"local\"").non_extractable ==
        NonExtractablePolicy::kLocal);
  CHECK(with("[balancing]\npolicy = \"least-busy\"").balancing == BalancingPolicy::kLeastBusy);
  CHECK(with("[balancing]\npolicy = \"priority\"").balancing == BalancingPolicy::kPriority);
  for (const char* level : {"trace", "debug", "info", "warn", "err", "error", "critical", "off"}) {
    CHECK(with(std::string("[log]\nlevel = \"") + level + "\"").log_level == level);
  }
  CHECK(with("[health]\nprobe_interval_ms = 1\ncall_timeout_ms = 1").call_timeout_ms == 1);
  CHECK(with("[cluster]\nlabel = \"" + std::string(32, 'x') + "\"").cluster_label.size() == 32);
}

TEST_CASE("config: a TOML syntax error names file, line and column", "[unit][config]") {
  const std::string message = ErrorOf("[cluster]\nlabel = \n", "bad.toml");
  CHECK_THAT(message, StartsWith("bad.toml:2:9: "));
  CHECK_THAT(message, Contains("expected value"));
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"a\"\nlabel = \"b\"\n", "dup.toml"),
             StartsWith("dup.toml:3:"));
}

TEST_CASE("config: unknown tables and keys are named", "[unit][config]") {
  CHECK_THAT(ErrorOf(std::string(kMember) + "\n[clustr]\nlabel = \"x\"\n"),
             StartsWith("test.toml:7: key 'clustr': unknown key"));
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"x\"\nlabl = \"y\"\n" + std::string(kMember)),
             StartsWith("test.toml:3: key 'cluster.labl': unknown key"));
  CHECK_THAT(ErrorOf("[cluster]\nlabl = \"y\"\n" + std::string(kMember)),
             Contains("expected one of: label, slot_id"));
  CHECK_THAT(ErrorOf("top = 1\n" + std::string(kMember)),
             StartsWith("test.toml:1: key 'top': unknown key"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "\n[health.extra]\nx = 1\n"),
             StartsWith("test.toml:7: key 'health.extra': unknown key"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "pin_file = \"/p\"\n"),
             StartsWith("test.toml:6: key 'member.pin_file': unknown key"));
  CHECK_THAT(ErrorOf(std::string(kMember) + kMember + "wieght = 2\n"),
             StartsWith("test.toml:11: key 'member.wieght': unknown key"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[auth]\npin = \"1234\"\n"),
             StartsWith("test.toml:7: key 'auth.pin': unknown key"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\nquorom = 2\n"),
             StartsWith("test.toml:7: key 'replication.quorom'"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[balancing]\npolicies = \"x\"\n"),
             StartsWith("test.toml:7: key 'balancing.policies'"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[log]\nfile = \"\"\npath = \"x\"\n"),
             StartsWith("test.toml:8: key 'log.path'"));
}

TEST_CASE("config: wrong value types are named", "[unit][config]") {
  const std::string message = ErrorOf("[cluster]\nslot_id = \"x\"\n" + std::string(kMember));
  CHECK_THAT(message, StartsWith("test.toml:2: key 'cluster.slot_id': must be an integer"));
  CHECK_THAT(message, Contains("not a string"));
  CHECK_THAT(ErrorOf("[cluster]\nlabel = 5\n" + std::string(kMember)),
             StartsWith("test.toml:2: key 'cluster.label': must be a string, not an integer"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "standby = \"no\"\n"),
             StartsWith("test.toml:6: key 'member.standby': must be a boolean"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "weight = 1.5\n"),
             StartsWith("test.toml:6: key 'member.weight': must be an integer, not a float"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[health]\ncall_timeout_ms = \"2s\"\n"),
             StartsWith("test.toml:7: key 'health.call_timeout_ms': must be an integer"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\nquorum = true\n"),
             StartsWith("test.toml:7: key 'replication.quorum': must be \"majority\", \"all\" or "
                        "a positive integer, not a boolean"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[log]\nlevel = 1\n"),
             StartsWith("test.toml:7: key 'log.level': must be a string"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[auth]\npin_file = [\"/p\"]\n"),
             StartsWith("test.toml:7: key 'auth.pin_file': must be a string, not an array"));
  CHECK_THAT(ErrorOf("cluster = 3\n" + std::string(kMember)),
             StartsWith("test.toml:1: key 'cluster': must be a table"));
  CHECK_THAT(ErrorOf("[member]\nname = \"a\"\n"),
             StartsWith("test.toml:1: key 'member': must be written as [[member]] tables"));
  CHECK_THAT(ErrorOf("member = [1, 2]\n"),
             StartsWith("test.toml:1: key 'member': must be written as [[member]] tables"));
}

TEST_CASE("config: a wrong value is reported on the line of the value", "[unit][config]") {
  // Multi-line values and inline tables must not shift the reported line.
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"\"\"\nx\"\"\"\nslot_id = -1\n" + std::string(kMember)),
             StartsWith("test.toml:4: key 'cluster.slot_id'"));
  CHECK_THAT(ErrorOf("member = [{ name = \"a\", module = \"/m\", token = \"x\" }]\n"),
             StartsWith("test.toml:1: key 'member.token'"));
}

TEST_CASE("config: impossible cluster values", "[unit][config]") {
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"\"\n" + std::string(kMember)),
             StartsWith("test.toml:2: key 'cluster.label': must not be empty"));
  const std::string long_label =
      ErrorOf("[cluster]\nlabel = \"" + std::string(33, 'x') + "\"\n" + std::string(kMember));
  CHECK_THAT(long_label, StartsWith("test.toml:2: key 'cluster.label': must be at most 32 bytes"));
  CHECK_THAT(long_label, Contains("not 33"));
  // 11 characters, 33 bytes: the limit is the PKCS#11 field size, in bytes.
  std::string euros;
  for (int i = 0; i < 11; ++i) euros += "\xE2\x82\xAC";
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"" + euros + "\"\n" + std::string(kMember)),
             Contains("key 'cluster.label': must be at most 32 bytes"));
  CHECK_THAT(ErrorOf("[cluster]\nslot_id = -1\n" + std::string(kMember)),
             StartsWith("test.toml:2: key 'cluster.slot_id': must not be negative"));
}

TEST_CASE("config: impossible member sets", "[unit][config]") {
  CHECK_THAT(ErrorOf("[cluster]\nlabel = \"x\"\n"),
             StartsWith("test.toml:1: key 'member': at least one [[member]] table is required"));
  CHECK_THAT(ErrorOf(""), Contains("key 'member': at least one"));
  CHECK_THAT(ErrorOf("member = []\n"),
             StartsWith("test.toml:1: key 'member': at least one [[member]] table is required"));

  CHECK_THAT(ErrorOf("[[member]]\nmodule = \"/m.so\"\ntoken = \"pkcs11:\"\n"),
             StartsWith("test.toml:1: key 'member.name': is required"));
  CHECK_THAT(ErrorOf("[[member]]\nname = \"\"\nmodule = \"/m.so\"\ntoken = \"pkcs11:\"\n"),
             StartsWith("test.toml:2: key 'member.name': must not be empty"));

  const std::string duplicate = ErrorOf(std::string(kMember) + kMember);
  CHECK_THAT(duplicate, StartsWith("test.toml:8: key 'member.name': duplicate member name \"a\""));
  CHECK_THAT(duplicate, Contains("first used on line 3"));

  const std::string both = ErrorOf(std::string(kMember) + "remote = \"unix:path=/s\"\n");
  CHECK_THAT(both, StartsWith("test.toml:6: key 'member.remote':"));
  CHECK_THAT(both, Contains("both 'module' and 'remote'"));

  const std::string neither =
      ErrorOf(std::string(kMember) + "\n[[member]]\nname = \"b\"\ntoken = \"pkcs11:\"\n");
  CHECK_THAT(neither, StartsWith("test.toml:7: key 'member.module':"));
  CHECK_THAT(neither, Contains("member 'b' needs either 'module' or 'remote'"));

  CHECK_THAT(ErrorOf("\n[[member]]\nname = \"a\"\nmodule = \"/m.so\"\n"),
             StartsWith("test.toml:2: key 'member.token': is required for member 'a'"));
  CHECK_THAT(ErrorOf("[[member]]\nname = \"a\"\nmodule = \"\"\ntoken = \"pkcs11:\"\n"),
             StartsWith("test.toml:3: key 'member.module': must not be empty"));

  const std::string bad_uri =
      ErrorOf("[[member]]\nname = \"a\"\nmodule = \"/m.so\"\ntoken = \"token=m1\"\n");
  CHECK_THAT(bad_uri, StartsWith("test.toml:4: key 'member.token': must be a PKCS#11 URI"));
  CHECK_THAT(bad_uri, Contains("\"token=m1\""));
  CHECK_THAT(ErrorOf("[[member]]\nname = \"a\"\nremote = \"unix:path=/s\"\ntoken = \"m1\"\n"),
             StartsWith("test.toml:4: key 'member.token': must be a PKCS#11 URI"));

  CHECK_THAT(ErrorOf(std::string(kMember) + "weight = 0\n"),
             StartsWith("test.toml:6: key 'member.weight': must be between 1 and"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "weight = 4294967296\n"),
             StartsWith("test.toml:6: key 'member.weight': must be between 1 and 4294967295"));

  CHECK_THAT(ErrorOf(std::string(kMember) + "standby = true\n"),
             StartsWith("test.toml:6: key 'member.standby': every member is a standby"));
}

TEST_CASE("config: impossible replication values", "[unit][config]") {
  const std::string two_active_one_standby = std::string(kMember) +
                                             "[[member]]\nname = \"b\"\nremote = \"unix:path=/b\"\n"
                                             "[[member]]\nname = \"c\"\nremote = \"unix:path=/c\"\n"
                                             "standby = true\n";  // lines 1-12
  const Config two = ParseConfig(two_active_one_standby + "[replication]\nquorum = 2\n", "q.toml");
  CHECK(two.quorum.count == 2);

  const std::string too_many =
      ErrorOf(two_active_one_standby + "[replication]\nquorum = 3\n", "q.toml");
  CHECK_THAT(too_many, StartsWith("q.toml:14: key 'replication.quorum': 3 is more than the 2"));
  CHECK_THAT(too_many, Contains("non-standby members"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\nquorum = 0\n"),
             StartsWith("test.toml:7: key 'replication.quorum': must be \"majority\", \"all\" or a "
                        "positive integer, not 0"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\nquorum = -2\n"),
             Contains("key 'replication.quorum'"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\nquorum = \"most\"\n"),
             StartsWith("test.toml:7: key 'replication.quorum':"));

  const std::string policy =
      ErrorOf(std::string(kMember) + "[replication]\nnon_extractable = \"wrap\"\n");
  CHECK_THAT(policy, StartsWith("test.toml:7: key 'replication.non_extractable': must be one of "
                                "\"trusted-wrap\", \"refuse\", \"local\", not \"wrap\""));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[replication]\ndomain_key_label = \"\"\n"),
             StartsWith("test.toml:7: key 'replication.domain_key_label': must not be empty"));
}

TEST_CASE("config: impossible balancing, health, catalog and log values", "[unit][config]") {
  CHECK_THAT(ErrorOf(std::string(kMember) + "[balancing]\npolicy = \"random\"\n"),
             StartsWith("test.toml:7: key 'balancing.policy': must be one of \"least-busy\", "
                        "\"round-robin\", \"priority\", not \"random\""));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[health]\nprobe_interval_ms = 0\n"),
             StartsWith("test.toml:7: key 'health.probe_interval_ms': must be between 1 and "
                        "600000, not 0"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[health]\ncall_timeout_ms = 600001\n"),
             StartsWith("test.toml:7: key 'health.call_timeout_ms': must be between 1 and "
                        "600000, not 600001"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[health]\ncall_timeout_ms = -5\n"),
             StartsWith("test.toml:7: key 'health.call_timeout_ms'"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[catalog]\nmax_age_ms = -1\n"),
             StartsWith("test.toml:7: key 'catalog.max_age_ms': must be between 0 and 600000, not -1"));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[catalog]\nmax_age = 5\n"),
             StartsWith("test.toml:7: key 'catalog.max_age'"));
  const std::string level = ErrorOf(std::string(kMember) + "[log]\nlevel = \"verbose\"\n");
  CHECK_THAT(level, StartsWith("test.toml:7: key 'log.level': must be one of \"trace\""));
  CHECK_THAT(level, Contains("not \"verbose\""));
  CHECK_THAT(ErrorOf(std::string(kMember) + "[log]\nlevel = \"WARN\"\n"),
             StartsWith("test.toml:7: key 'log.level'"));
}

TEST_CASE("config: LoadConfig reads a file and names it", "[unit][config]") {
  TempDir dir;
  const std::string good = dir.Write("good.toml", kMember);
  const Config config = LoadConfig(good);
  CHECK(config.source_path == good);
  CHECK(config.members.at(0).name == "a");

  const std::string bad = dir.Write("bad.toml", "[cluster]\nslot_id = \"x\"\n");
  CHECK_THROWS_WITH(LoadConfig(bad), StartsWith(bad + ":2: key 'cluster.slot_id'"));

  const std::string missing = dir.Path("missing.toml");
  CHECK_THROWS_WITH(LoadConfig(missing),
                    missing + ": cannot read: " + std::generic_category().message(ENOENT));
  CHECK_THROWS_WITH(LoadConfig(dir.Path("")), StartsWith(dir.Path("") + ": cannot read: "));
  CHECK_THROWS_AS(LoadConfig(missing), ConfigError);
}

TEST_CASE("config: DefaultConfigPath honours P11HA_CONFIG", "[unit][config]") {
  {
    ScopedEnv env("P11HA_CONFIG", nullptr);
    CHECK(DefaultConfigPath() == "/etc/p11ha/p11ha.toml");
  }
  {
    ScopedEnv env("P11HA_CONFIG", "");
    CHECK(DefaultConfigPath() == "/etc/p11ha/p11ha.toml");
  }
  {
    ScopedEnv env("P11HA_CONFIG", "/tmp/x.toml");
    CHECK(DefaultConfigPath() == "/tmp/x.toml");
  }
}

TEST_CASE("config: ReadSecretFile strips one trailing newline", "[unit][config]") {
  TempDir dir;
  CHECK(ReadSecretFile(dir.Write("plain", "1234")) == "1234");
  CHECK(ReadSecretFile(dir.Write("lf", "1234\n")) == "1234");
  CHECK(ReadSecretFile(dir.Write("crlf", "1234\r\n")) == "1234");
  CHECK(ReadSecretFile(dir.Write("two", "1234\n\n")) == "1234\n");
  CHECK(ReadSecretFile(dir.Write("cr-only", "1234\r")) == "1234\r");
  CHECK(ReadSecretFile(dir.Write("inner", " a b\nc ")) == " a b\nc ");
  const std::string binary("\x00\x01\xff", 3);
  CHECK(ReadSecretFile(dir.Write("binary", binary)) == binary);
  const std::string big(64 * 1024, 'p');
  CHECK(ReadSecretFile(dir.Write("big", big)) == big);
}

TEST_CASE("config: ReadSecretFile errors name the path, never the content", "[unit][config]") {
  TempDir dir;
  const std::string empty = dir.Write("empty", "");
  CHECK_THROWS_WITH(ReadSecretFile(empty), empty + ": is empty");
  const std::string newline = dir.Write("newline", "\n");
  CHECK_THROWS_WITH(ReadSecretFile(newline), newline + ": is empty");
  const std::string missing = dir.Path("missing");
  CHECK_THROWS_WITH(ReadSecretFile(missing),
                    missing + ": cannot read: " + std::generic_category().message(ENOENT));
  CHECK_THROWS_AS(ReadSecretFile(dir.Path("")), ConfigError);
  const std::string huge = dir.Write("huge", std::string(64 * 1024 + 1, 's') + "SECRET");
  CHECK_THROWS_WITH(ReadSecretFile(huge), StartsWith(huge + ": larger than"));
  CHECK_THROWS_WITH(ReadSecretFile(huge), !Contains("SECRET"));
}

}  // namespace
}  // namespace p11ha::config
