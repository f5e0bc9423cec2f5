// SPDX-License-Identifier: Apache-2.0
#include "config/config.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

namespace p11ha::config {
namespace {

constexpr const char* kDefaultConfigPath = "/etc/p11ha/p11ha.toml";
constexpr const char* kConfigPathEnv = "P11HA_CONFIG";
constexpr std::size_t kMaxLabelBytes = 32;  // CK_TOKEN_INFO.label is a fixed 32-byte field
constexpr std::int64_t kMinIntervalMs = 1;
constexpr std::int64_t kMaxIntervalMs = 600000;
constexpr std::int64_t kMaxReplayLimitBytes = std::int64_t{1} << 30;
constexpr std::size_t kMaxSecretBytes = 64 * 1024;
constexpr std::string_view kUriScheme = "pkcs11:";

// Positions match the enumerators listed next to each use.
constexpr std::string_view kNonExtractableNames[] = {"trusted-wrap", "refuse", "local"};
constexpr std::string_view kBalancingNames[] = {"least-busy", "round-robin", "priority"};
// The names spdlog::level::from_str accepts, so the value can be handed to it unchanged.
constexpr std::string_view kLogLevelNames[] = {"trace", "debug", "info",     "warn", "warning",
                                               "err",   "error", "critical", "off"};

std::string ErrnoText(int error) { return std::generic_category().message(error); }

// Keeps fds from leaking into children of the application that loaded the module.
int OpenForReading(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

// Reads at most `limit` bytes into `out` (which must have room); returns the count or -errno.
ssize_t ReadAtMost(int fd, char* out, std::size_t limit) {
  std::size_t total = 0;
  while (total < limit) {
    ssize_t n = ::read(fd, out + total, limit - total);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    total += static_cast<std::size_t>(n);
  }
  return static_cast<ssize_t>(total);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

[[noreturn]] void ThrowCannotRead(const std::string& path, int error) {
  throw ConfigError(path + ": cannot read: " + ErrnoText(error));
}

std::string ReadWholeFile(const std::string& path) {
  Fd fd(OpenForReading(path));
  if (fd.get() < 0) ThrowCannotRead(path, errno);
  std::string text;
  char chunk[4096];
  for (;;) {
    ssize_t n = ReadAtMost(fd.get(), chunk, sizeof chunk);
    if (n < 0) ThrowCannotRead(path, static_cast<int>(-n));
    if (n == 0) break;
    text.append(chunk, static_cast<std::size_t>(n));
  }
  return text;
}

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

template <typename T>
constexpr std::string_view kExpected = "";
template <>
constexpr std::string_view kExpected<std::string> = "a string";
template <>
constexpr std::string_view kExpected<std::int64_t> = "an integer";
template <>
constexpr std::string_view kExpected<bool> = "a boolean";

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string JoinNames(std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

template <typename T>
struct Field {
  T value;
  const toml::node* node;
};

class Validator {
 public:
  explicit Validator(std::string display_path) : display_path_(std::move(display_path)) {}

  [[noreturn]] void Fail(const toml::source_region& where, std::string_view key,
                         std::string_view what) const {
    throw ConfigError(display_path_ + ":" + std::to_string(where.begin.line) + ": key '" +
                      std::string(key) + "': " + std::string(what));
  }

  // A section that is absent yields nullptr; its defaults then apply.
  const toml::table* Section(const toml::table& root, std::string_view name) const {
    const toml::node* node = root.get(name);
    if (node == nullptr) return nullptr;
    const toml::table* table = node->as_table();
    if (table == nullptr) {
      Fail(node->source(), name,
           "must be a table ([" + std::string(name) + "]), not " +
               std::string(TypeName(node->type())));
    }
    return table;
  }

  void CheckKeys(const toml::table& table, std::string_view section,
                 std::initializer_list<std::string_view> allowed) const {
    for (auto&& [key, node] : table) {
      bool known = false;
      for (std::string_view name : allowed) known = known || key.str() == name;
      if (!known) {
        std::string full = section.empty() ? std::string(key.str()) : Join(section, key.str());
        Fail(key.source(), full, "unknown key (expected one of: " + JoinNames(allowed) + ")");
      }
    }
  }

  template <typename T>
  std::optional<Field<T>> Get(const toml::table& table, std::string_view section,
                              std::string_view key) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return std::nullopt;
    const auto* value = node->as<T>();
    if (value == nullptr) {
      Fail(node->source(), Join(section, key),
           "must be " + std::string(kExpected<T>) + ", not " + std::string(TypeName(node->type())));
    }
    return Field<T>{value->get(), node};
  }

  std::optional<Field<std::string>> NonEmptyString(const toml::table& table,
                                                   std::string_view section,
                                                   std::string_view key) const {
    auto field = Get<std::string>(table, section, key);
    if (field && field->value.empty()) {
      Fail(field->node->source(), Join(section, key), "must not be empty");
    }
    return field;
  }

  std::optional<Field<std::int64_t>> IntegerIn(const toml::table& table, std::string_view section,
                                               std::string_view key, std::int64_t min,
                                               std::int64_t max) const {
    auto field = Get<std::int64_t>(table, section, key);
    if (field && (field->value < min || field->value > max)) {
      Fail(field->node->source(), Join(section, key),
           "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", not " +
               std::to_string(field->value));
    }
    return field;
  }

  // Picks one of `choices` by the value's text; the caller maps positions to enum values.
  std::optional<std::size_t> Choice(const toml::table& table, std::string_view section,
                                    std::string_view key,
                                    std::span<const std::string_view> choices) const {
    auto field = Get<std::string>(table, section, key);
    if (!field) return std::nullopt;
    std::size_t index = 0;
    for (std::string_view choice : choices) {
      if (field->value == choice) return index;
      ++index;
    }
    std::string expected;
    for (std::string_view choice : choices) {
      if (!expected.empty()) expected += ", ";
      expected += Quote(choice);
    }
    Fail(field->node->source(), Join(section, key),
         "must be one of " + expected + ", not " + Quote(field->value));
  }

  static std::string Join(std::string_view section, std::string_view key) {
    return std::string(section) + "." + std::string(key);
  }

 private:
  std::string display_path_;
};

void ParseCluster(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* cluster = v.Section(root, "cluster");
  if (cluster == nullptr) return;
  v.CheckKeys(*cluster, "cluster", {"label", "slot_id"});
  if (auto label = v.NonEmptyString(*cluster, "cluster", "label")) {
    if (label->value.size() > kMaxLabelBytes) {
      v.Fail(label->node->source(), "cluster.label",
             "must be at most " + std::to_string(kMaxLabelBytes) +
                 " bytes (the PKCS#11 token label field), not " +
                 std::to_string(label->value.size()));
    }
    config.cluster_label = label->value;
  }
  if (auto slot_id = v.Get<std::int64_t>(*cluster, "cluster", "slot_id")) {
    if (slot_id->value < 0) {
      v.Fail(slot_id->node->source(), "cluster.slot_id",
             "must not be negative, not " + std::to_string(slot_id->value));
    }
    config.slot_id = static_cast<std::uint64_t>(slot_id->value);
  }
}

MemberConfig ParseMember(const Validator& v, const toml::table& table,
                         const toml::node** standby_node) {
  v.CheckKeys(table, "member", {"name", "module", "token", "remote", "standby", "weight"});
  MemberConfig member;
  auto name = v.NonEmptyString(table, "member", "name");
  if (!name) v.Fail(table.source(), "member.name", "is required in every [[member]]");
  member.name = name->value;

  auto module = v.NonEmptyString(table, "member", "module");
  auto remote = v.NonEmptyString(table, "member", "remote");
  auto token = v.NonEmptyString(table, "member", "token");
  if (module && remote) {
    v.Fail(remote->node->source(), "member.remote",
           "member '" + member.name +
               "' sets both 'module' and 'remote'; a member is one or the other");
  }
  if (!module && !remote) {
    v.Fail(table.source(), "member.module",
           "member '" + member.name + "' needs either 'module' or 'remote'");
  }
  if (module && !token) {
    v.Fail(table.source(), "member.token",
           "is required for member '" + member.name + "' (a module member)");
  }
  if (token && token->value.compare(0, kUriScheme.size(), kUriScheme) != 0) {
    v.Fail(token->node->source(), "member.token",
           "must be a PKCS#11 URI starting with \"pkcs11:\", not " + Quote(token->value));
  }
  if (module) member.module = module->value;
  if (remote) member.remote = remote->value;
  // A remote member without a token URI matches any token; "pkcs11:" is the URI that does so.
  member.token = token ? token->value : std::string(kUriScheme);

  *standby_node = nullptr;
  if (auto standby = v.Get<bool>(table, "member", "standby")) {
    member.standby = standby->value;
    *standby_node = standby->node;
  }
  if (auto weight = v.IntegerIn(table, "member", "weight", 1, UINT_MAX)) {
    member.weight = static_cast<unsigned>(weight->value);
  }
  return member;
}

void ParseMembers(const Validator& v, const toml::table& root, Config& config) {
  const toml::node* node = root.get("member");
  if (node == nullptr) {
    v.Fail(root.source(), "member", "at least one [[member]] table is required");
  }
  const toml::array* array = node->as_array();
  if (array != nullptr && array->empty()) {
    v.Fail(node->source(), "member", "at least one [[member]] table is required");
  }
  if (array == nullptr || !array->is_array_of_tables()) {
    v.Fail(node->source(), "member",
           "must be written as [[member]] tables, not " + std::string(TypeName(node->type())));
  }

  std::map<std::string, const toml::node*, std::less<>> seen;
  const toml::node* first_standby = nullptr;
  for (const toml::node& element : *array) {
    const toml::table& table = *element.as_table();
    const toml::node* standby_node = nullptr;
    MemberConfig member = ParseMember(v, table, &standby_node);
    const toml::node* name_node = table.get("name");
    auto [it, inserted] = seen.emplace(member.name, name_node);
    if (!inserted) {
      v.Fail(name_node->source(), "member.name",
             "duplicate member name " + Quote(member.name) + " (first used on line " +
                 std::to_string(it->second->source().begin.line) + ")");
    }
    if (first_standby == nullptr) first_standby = standby_node;
    config.members.push_back(std::move(member));
  }

  bool any_active = false;
  for (const MemberConfig& member : config.members) any_active = any_active || !member.standby;
  if (!any_active) {
    v.Fail(first_standby->source(), "member.standby",
           "every member is a standby; at least one must be active");
  }
}

void ParseAuth(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* auth = v.Section(root, "auth");
  if (auth == nullptr) return;
  v.CheckKeys(*auth, "auth", {"pin_file"});
  if (auto pin_file = v.Get<std::string>(*auth, "auth", "pin_file")) {
    config.pin_file = pin_file->value;
  }
}

void ParseQuorum(const Validator& v, const toml::table& replication, Config& config) {
  const toml::node* node = replication.get("quorum");
  if (node == nullptr) return;
  constexpr std::string_view kWhat = "must be \"majority\", \"all\" or a positive integer";
  if (const auto* text = node->as_string()) {
    if (text->get() == "majority") {
      config.quorum = Quorum{Quorum::Kind::kMajority, 0};
    } else if (text->get() == "all") {
      config.quorum = Quorum{Quorum::Kind::kAll, 0};
    } else {
      v.Fail(node->source(), "replication.quorum",
             std::string(kWhat) + ", not " + Quote(text->get()));
    }
    return;
  }
  const auto* count = node->as_integer();
  if (count == nullptr) {
    v.Fail(node->source(), "replication.quorum",
           std::string(kWhat) + ", not " + std::string(TypeName(node->type())));
  }
  if (count->get() < 1) {
    v.Fail(node->source(), "replication.quorum",
           std::string(kWhat) + ", not " + std::to_string(count->get()));
  }
  std::int64_t active = 0;
  for (const MemberConfig& member : config.members) active += member.standby ? 0 : 1;
  if (count->get() > active) {
    v.Fail(node->source(), "replication.quorum",
           std::to_string(count->get()) + " is more than the " + std::to_string(active) +
               " configured non-standby members");
  }
  config.quorum = Quorum{Quorum::Kind::kCount, static_cast<unsigned>(count->get())};
}

void ParseReplication(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* replication = v.Section(root, "replication");
  if (replication == nullptr) return;
  v.CheckKeys(*replication, "replication", {"domain_key_label", "quorum", "non_extractable"});
  if (auto label = v.NonEmptyString(*replication, "replication", "domain_key_label")) {
    config.domain_key_label = label->value;
  }
  ParseQuorum(v, *replication, config);
  if (auto index = v.Choice(*replication, "replication", "non_extractable", kNonExtractableNames)) {
    constexpr NonExtractablePolicy kPolicies[] = {NonExtractablePolicy::kTrustedWrap,
                                                  NonExtractablePolicy::kRefuse,
                                                  NonExtractablePolicy::kLocal};
    config.non_extractable = kPolicies[*index];
  }
}

void ParseBalancing(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* balancing = v.Section(root, "balancing");
  if (balancing == nullptr) return;
  v.CheckKeys(*balancing, "balancing", {"policy"});
  if (auto index = v.Choice(*balancing, "balancing", "policy", kBalancingNames)) {
    constexpr BalancingPolicy kPolicies[] = {
        BalancingPolicy::kLeastBusy, BalancingPolicy::kRoundRobin, BalancingPolicy::kPriority};
    config.balancing = kPolicies[*index];
  }
}

void ParseHealth(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* health = v.Section(root, "health");
  if (health == nullptr) return;
  v.CheckKeys(*health, "health", {"probe_interval_ms", "call_timeout_ms", "replay_limit_bytes"});
  if (auto probe =
          v.IntegerIn(*health, "health", "probe_interval_ms", kMinIntervalMs, kMaxIntervalMs)) {
    config.probe_interval_ms = static_cast<unsigned>(probe->value);
  }
  if (auto timeout =
          v.IntegerIn(*health, "health", "call_timeout_ms", kMinIntervalMs, kMaxIntervalMs)) {
    config.call_timeout_ms = static_cast<unsigned>(timeout->value);
  }
  if (auto limit = v.IntegerIn(*health, "health", "replay_limit_bytes", 0, kMaxReplayLimitBytes)) {
    config.replay_limit_bytes = static_cast<std::uint64_t>(limit->value);
  }
}

void ParseCatalog(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* catalog = v.Section(root, "catalog");
  if (catalog == nullptr) return;
  v.CheckKeys(*catalog, "catalog", {"max_age_ms"});
  // 0 is allowed: every find then goes to the members.
  if (auto age = v.IntegerIn(*catalog, "catalog", "max_age_ms", 0, kMaxIntervalMs)) {
    config.catalog_max_age_ms = static_cast<unsigned>(age->value);
  }
}

void ParseLog(const Validator& v, const toml::table& root, Config& config) {
  const toml::table* log = v.Section(root, "log");
  if (log == nullptr) return;
  v.CheckKeys(*log, "log", {"level", "file"});
  if (auto index = v.Choice(*log, "log", "level", kLogLevelNames)) {
    config.log_level = std::string(kLogLevelNames[*index]);
  }
  if (auto file = v.Get<std::string>(*log, "log", "file")) config.log_file = file->value;
}

}  // namespace

std::string DefaultConfigPath() {
  // secure_getenv: a setuid program loading the module must not take a config (and with it a
  // member module path to dlopen) from its caller's environment.
  const char* path = ::secure_getenv(kConfigPathEnv);
  if (path != nullptr && *path != '\0') return path;
  return kDefaultConfigPath;
}

Config LoadConfig(const std::string& path) { return ParseConfig(ReadWholeFile(path), path); }

Config ParseConfig(const std::string& toml_text, const std::string& source_path) {
  const std::string display_path = source_path.empty() ? "<config>" : source_path;
  toml::table root;
  try {
    root = toml::parse(std::string_view(toml_text), std::string_view(display_path));
  } catch (const toml::parse_error& error) {
    const toml::source_position& where = error.source().begin;
    throw ConfigError(display_path + ":" + std::to_string(where.line) + ":" +
                      std::to_string(where.column) + ": " + std::string(error.description()));
  }

  const Validator v(display_path);
  v.CheckKeys(root, "", {"cluster", "member", "auth", "replication", "balancing", "health", "catalog", "log"});

  Config config;
  config.source_path = source_path;
  ParseCluster(v, root, config);
  ParseMembers(v, root, config);
  ParseAuth(v, root, config);
  ParseReplication(v, root, config);
  ParseBalancing(v, root, config);
  ParseHealth(v, root, config);
  ParseCatalog(v, root, config);
  ParseLog(v, root, config);
  return config;
}

std::string ReadSecretFile(const std::string& path) {
  // One fixed buffer that is wiped on every exit, so no reallocation leaves a copy behind.
  std::string buffer(kMaxSecretBytes + 1, '\0');
  struct Wipe {
    std::string& buffer;
    ~Wipe() { OPENSSL_cleanse(buffer.data(), buffer.size()); }
  } wipe{buffer};

  Fd fd(OpenForReading(path));
  if (fd.get() < 0) ThrowCannotRead(path, errno);
  ssize_t n = ReadAtMost(fd.get(), buffer.data(), buffer.size());
  if (n < 0) ThrowCannotRead(path, static_cast<int>(-n));
  auto size = static_cast<std::size_t>(n);
  if (size > kMaxSecretBytes) {
    throw ConfigError(path + ": larger than " + std::to_string(kMaxSecretBytes) +
                      " bytes; not a secret file");
  }
  if (size > 0 && buffer[size - 1] == '\n') {
    --size;
    if (size > 0 && buffer[size - 1] == '\r') --size;
  }
  if (size == 0) throw ConfigError(path + ": is empty");
  return std::string(buffer.data(), size);
}

}  // namespace p11ha::config
