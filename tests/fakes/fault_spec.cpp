// SPDX-License-Identifier: Apache-2.0
#include "fault_spec.h"

#include <cerrno>
#include <cstdlib>
#include <utility>

namespace p11ha::test_member {
namespace {

struct RvName {
  std::string_view name;
  CK_RV rv;
};

// clang-format off
#define P11HA_RV(name) RvName{#name, name},
constexpr RvName kRvNames[] = {
    P11HA_RV(CKR_OK)
    P11HA_RV(CKR_CANCEL)
    P11HA_RV(CKR_HOST_MEMORY)
    P11HA_RV(CKR_SLOT_ID_INVALID)
    P11HA_RV(CKR_GENERAL_ERROR)
    P11HA_RV(CKR_FUNCTION_FAILED)
    P11HA_RV(CKR_ARGUMENTS_BAD)
    P11HA_RV(CKR_NO_EVENT)
    P11HA_RV(CKR_NEED_TO_CREATE_THREADS)
    P11HA_RV(CKR_CANT_LOCK)
    P11HA_RV(CKR_ATTRIBUTE_READ_ONLY)
    P11HA_RV(CKR_ATTRIBUTE_SENSITIVE)
    P11HA_RV(CKR_ATTRIBUTE_TYPE_INVALID)
    P11HA_RV(CKR_ATTRIBUTE_VALUE_INVALID)
    P11HA_RV(CKR_ACTION_PROHIBITED)
    P11HA_RV(CKR_DATA_INVALID)
    P11HA_RV(CKR_DATA_LEN_RANGE)
    P11HA_RV(CKR_DEVICE_ERROR)
    P11HA_RV(CKR_DEVICE_MEMORY)
    P11HA_RV(CKR_DEVICE_REMOVED)
    P11HA_RV(CKR_ENCRYPTED_DATA_INVALID)
    P11HA_RV(CKR_ENCRYPTED_DATA_LEN_RANGE)
    P11HA_RV(CKR_FUNCTION_CANCELED)
    P11HA_RV(CKR_FUNCTION_NOT_PARALLEL)
    P11HA_RV(CKR_FUNCTION_NOT_SUPPORTED)
    P11HA_RV(CKR_KEY_HANDLE_INVALID)
    P11HA_RV(CKR_KEY_SIZE_RANGE)
    P11HA_RV(CKR_KEY_TYPE_INCONSISTENT)
    P11HA_RV(CKR_KEY_NOT_NEEDED)
    P11HA_RV(CKR_KEY_CHANGED)
    P11HA_RV(CKR_KEY_NEEDED)
    P11HA_RV(CKR_KEY_INDIGESTIBLE)
    P11HA_RV(CKR_KEY_FUNCTION_NOT_PERMITTED)
    P11HA_RV(CKR_KEY_NOT_WRAPPABLE)
    P11HA_RV(CKR_KEY_UNEXTRACTABLE)
    P11HA_RV(CKR_MECHANISM_INVALID)
    P11HA_RV(CKR_MECHANISM_PARAM_INVALID)
    P11HA_RV(CKR_OBJECT_HANDLE_INVALID)
    P11HA_RV(CKR_OPERATION_ACTIVE)
    P11HA_RV(CKR_OPERATION_NOT_INITIALIZED)
    P11HA_RV(CKR_PIN_INCORRECT)
    P11HA_RV(CKR_PIN_INVALID)
    P11HA_RV(CKR_PIN_LEN_RANGE)
    P11HA_RV(CKR_PIN_EXPIRED)
    P11HA_RV(CKR_PIN_LOCKED)
    P11HA_RV(CKR_SESSION_CLOSED)
    P11HA_RV(CKR_SESSION_COUNT)
    P11HA_RV(CKR_SESSION_HANDLE_INVALID)
    P11HA_RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
    P11HA_RV(CKR_SESSION_READ_ONLY)
    P11HA_RV(CKR_SESSION_EXISTS)
    P11HA_RV(CKR_SESSION_READ_ONLY_EXISTS)
    P11HA_RV(CKR_SESSION_READ_WRITE_SO_EXISTS)
    P11HA_RV(CKR_SIGNATURE_INVALID)
    P11HA_RV(CKR_SIGNATURE_LEN_RANGE)
    P11HA_RV(CKR_TEMPLATE_INCOMPLETE)
    P11HA_RV(CKR_TEMPLATE_INCONSISTENT)
    P11HA_RV(CKR_TOKEN_NOT_PRESENT)
    P11HA_RV(CKR_TOKEN_NOT_RECOGNIZED)
    P11HA_RV(CKR_TOKEN_WRITE_PROTECTED)
    P11HA_RV(CKR_UNWRAPPING_KEY_SIZE_RANGE)
    P11HA_RV(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    P11HA_RV(CKR_USER_ALREADY_LOGGED_IN)
    P11HA_RV(CKR_USER_NOT_LOGGED_IN)
    P11HA_RV(CKR_USER_PIN_NOT_INITIALIZED)
    P11HA_RV(CKR_USER_TYPE_INVALID)
    P11HA_RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
    P11HA_RV(CKR_USER_TOO_MANY_TYPES)
    P11HA_RV(CKR_WRAPPED_KEY_INVALID)
    P11HA_RV(CKR_WRAPPED_KEY_LEN_RANGE)
    P11HA_RV(CKR_WRAPPING_KEY_HANDLE_INVALID)
    P11HA_RV(CKR_WRAPPING_KEY_SIZE_RANGE)
    P11HA_RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    P11HA_RV(CKR_RANDOM_SEED_NOT_SUPPORTED)
    P11HA_RV(CKR_RANDOM_NO_RNG)
    P11HA_RV(CKR_DOMAIN_PARAMS_INVALID)
    P11HA_RV(CKR_CURVE_NOT_SUPPORTED)
    P11HA_RV(CKR_BUFFER_TOO_SMALL)
    P11HA_RV(CKR_SAVED_STATE_INVALID)
    P11HA_RV(CKR_INFORMATION_SENSITIVE)
    P11HA_RV(CKR_STATE_UNSAVEABLE)
    P11HA_RV(CKR_CRYPTOKI_NOT_INITIALIZED)
    P11HA_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED)
    P11HA_RV(CKR_MUTEX_BAD)
    P11HA_RV(CKR_MUTEX_NOT_LOCKED)
    P11HA_RV(CKR_NEW_PIN_MODE)
    P11HA_RV(CKR_NEXT_OTP)
    P11HA_RV(CKR_EXCEEDED_MAX_ITERATIONS)
    P11HA_RV(CKR_FIPS_SELF_TEST_FAILED)
    P11HA_RV(CKR_LIBRARY_LOAD_FAILED)
    P11HA_RV(CKR_PIN_TOO_WEAK)
    P11HA_RV(CKR_PUBLIC_KEY_INVALID)
    P11HA_RV(CKR_FUNCTION_REJECTED)
};
#undef P11HA_RV
// clang-format on

std::string_view Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::vector<std::string_view> Words(std::string_view text) {
  std::vector<std::string_view> words;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto start = text.find_first_not_of(" \t", pos);
    if (start == std::string_view::npos) break;
    auto end = text.find_first_of(" \t", start);
    if (end == std::string_view::npos) end = text.size();
    words.push_back(text.substr(start, end - start));
    pos = end;
  }
  return words;
}

std::optional<unsigned long> ParseNumber(std::string_view text) {
  if (text.empty() || text.front() == '-' || text.front() == '+') return std::nullopt;
  const std::string copy(text);
  char* end = nullptr;
  errno = 0;
  const unsigned long value = std::strtoul(copy.c_str(), &end, 0);
  if (errno != 0 || end != copy.c_str() + copy.size()) return std::nullopt;
  return value;
}

// Parses the optional "after N" and "times K" tail of a fail, hang, stall or restart rule.
bool ParseTail(const std::vector<std::string_view>& words, std::size_t pos, bool allow_times,
               FaultRule* rule) {
  while (pos < words.size()) {
    if (pos + 1 >= words.size()) return false;
    const auto number = ParseNumber(words[pos + 1]);
    if (!number) return false;
    if (words[pos] == "after") {
      rule->after = *number;
    } else if (words[pos] == "times" && allow_times) {
      rule->times = *number;
    } else {
      return false;
    }
    pos += 2;
  }
  return true;
}

bool ParseFunction(std::string_view word, FaultRule* rule) {
  if (word == "*") {
    rule->function.reset();
    return true;
  }
  rule->function = FunctionFromName(word);
  return rule->function.has_value();
}

std::optional<FaultRule> ParseStatement(std::string_view statement) {
  const auto words = Words(statement);
  FaultRule rule;
  if (words.size() == 1) {
    if (words[0] == "dead") {
      rule.kind = FaultRule::Kind::kDead;
    } else if (words[0] == "restart") {
      rule.kind = FaultRule::Kind::kRestart;
      rule.any_call = true;
    } else if (words[0] == "clear") {
      rule.kind = FaultRule::Kind::kClear;
    } else {
      return std::nullopt;
    }
    return rule;
  }
  if (words[0] == "fail" && words.size() >= 3) {
    rule.kind = FaultRule::Kind::kFail;
    const auto rv = ParseRv(words[2]);
    if (!rv || !ParseFunction(words[1], &rule) || !ParseTail(words, 3, true, &rule)) {
      return std::nullopt;
    }
    rule.rv = *rv;
    return rule;
  }
  if ((words[0] == "hang" || words[0] == "stall" || words[0] == "restart") && words.size() >= 2) {
    rule.kind = words[0] == "hang"    ? FaultRule::Kind::kHang
                : words[0] == "stall" ? FaultRule::Kind::kStall
                                      : FaultRule::Kind::kRestart;
    // A restart happens once; a hang holds every matching call until the spec changes.
    const bool allow_times = rule.kind == FaultRule::Kind::kStall;
    if (!ParseFunction(words[1], &rule) || !ParseTail(words, 2, allow_times, &rule)) {
      return std::nullopt;
    }
    return rule;
  }
  return std::nullopt;
}

}  // namespace

std::optional<Fn> FunctionFromName(std::string_view name) {
  for (std::size_t i = 0; i < kFunctionCount; ++i) {
    if (kFunctionNames[i] == name) return static_cast<Fn>(i);
  }
  return std::nullopt;
}

std::string_view FunctionName(Fn fn) { return kFunctionNames[static_cast<std::size_t>(fn)]; }

std::optional<CK_RV> ParseRv(std::string_view text) {
  for (const auto& entry : kRvNames) {
    if (entry.name == text) return entry.rv;
  }
  return ParseNumber(text);
}

std::vector<FaultRule> ParseFaultSpec(std::string_view spec, std::vector<std::string>* errors) {
  std::vector<FaultRule> rules;
  std::size_t pos = 0;
  while (pos <= spec.size()) {
    auto end = spec.find_first_of(";\n", pos);
    if (end == std::string_view::npos) end = spec.size();
    auto statement = Trim(spec.substr(pos, end - pos));
    if (const auto hash = statement.find('#'); hash != std::string_view::npos) {
      statement = Trim(statement.substr(0, hash));
    }
    if (!statement.empty()) {
      if (auto rule = ParseStatement(statement)) {
        rules.push_back(*rule);
      } else if (errors != nullptr) {
        errors->emplace_back(statement);
      }
    }
    pos = end + 1;
  }
  return rules;
}

bool WildcardMatches(Fn fn) { return fn != Fn::kC_GetFunctionList && fn != Fn::kC_Finalize; }

}  // namespace p11ha::test_member
