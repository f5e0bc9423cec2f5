// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/status_report.h"

#include <algorithm>
#include <cstdio>

#include "tools/cli/json.h"

namespace p11ha::cli {
namespace {

std::string Milliseconds(double ms) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", ms);
  return text;
}

std::string Source(const MemberReport& member) {
  return member.remote.empty() ? "module " + member.module : "remote " + member.remote;
}

// Prints rows in aligned columns; `right` marks the numeric columns. The last column is not
// padded, so a long module path does not widen the table for everyone.
void PrintColumns(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right,
                  std::ostream& out) {
  std::vector<std::size_t> widths(right.size(), 0);
  for (const auto& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      bool last = c + 1 == row.size();
      std::string pad(widths[c] - row[c].size(), ' ');
      if (right[c]) {
        line += pad + row[c];
      } else {
        line += row[c];
        if (!last) line += pad;
      }
      if (!last) line += "  ";
    }
    out << line << "\n";
  }
}

}  // namespace

std::size_t StatusReport::UpCount() const {
  return static_cast<std::size_t>(std::count_if(members.begin(), members.end(), [](const auto& m) { return m.up; }));
}

std::optional<std::size_t> StatusReport::DriftTotal() const {
  std::optional<std::size_t> total;
  for (const MemberReport& m : members)
    if (m.drift) total = total.value_or(0) + *m.drift;
  return total;
}

bool StatusReport::Healthy() const {
  return !DomainsDiffer() && DriftTotal().value_or(0) == 0 &&
         std::all_of(members.begin(), members.end(), [](const auto& m) { return m.up && !m.objects_problem; });
}

bool StatusReport::DomainsDiffer() const {
  const std::string* first = nullptr;
  for (const MemberReport& m : members) {
    if (!m.up || !m.objects) continue;
    if (first != nullptr && m.domain != *first) return true;
    first = &m.domain;
  }
  return false;
}

void PrintTable(const StatusReport& report, std::ostream& out) {
  out << "cluster \"" << report.cluster_label << "\" (slot " << report.slot_id << ", policy " << report.policy
      << "), config " << report.config_path << "\n\n";
  std::vector<std::vector<std::string>> rows = {
      {"MEMBER", "ROLE", "STATE", "TOKEN", "SERIAL", "MODEL", "MECHS", "LATENCY", "OBJECTS", "DRIFT", "FAILS",
       "SOURCE"}};
  for (const MemberReport& m : report.members) {
    std::string role = m.standby ? "standby" : "active";
    std::string fails = std::to_string(m.failures);
    if (!m.up) {
      rows.push_back({m.name, role, m.state + " since " + m.since, "-", "-", "-", "-", "-", "-", "-", fails, Source(m)});
      continue;
    }
    rows.push_back({m.name, role, m.state, m.label, m.serial, m.model, std::to_string(m.mechanisms),
                    Milliseconds(m.latency_ms) + " ms", m.objects ? std::to_string(*m.objects) : "-",
                    m.drift ? std::to_string(*m.drift) : "-", fails, Source(m)});
  }
  PrintColumns(rows, {false, false, false, false, false, false, true, true, true, true, true, false}, out);

  bool any_note = false;
  auto note = [&](const std::string& text) {
    if (!any_note) out << "\n";
    any_note = true;
    out << text << "\n";
  };
  for (const MemberReport& m : report.members) {
    if (!m.up) {
      note(m.name + " is down: " + (m.error.empty() ? "(no reason recorded)" : m.error));
    } else if (!m.last_error.empty()) {
      note(m.name + " last error (" + std::to_string(m.failures) + " failures): " + m.last_error);
    }
  }
  if (!report.logged_in) {
    note("objects: (no pin_file: not logged in)");
  } else {
    for (const MemberReport& m : report.members) {
      if (m.up && !m.objects) note(m.name + " objects: " + m.objects_note);
      if (!m.up || !m.objects) continue;
      note(m.name + " domain: " + (m.domain.empty() ? "none (run `p11ha domain create`)" : m.domain));
      if (!m.local_keys.empty()) {
        std::string names;
        for (const std::string& label : m.local_keys) names += (names.empty() ? "" : ", ") + label;
        note(m.name + " local keys, on this member only (replication.non_extractable = \"local\"): " + names);
      }
    }
    if (report.DomainsDiffer()) note("members hold different domain keys: those unlike the majority take no copies");
    if (std::optional<std::size_t> drift = report.DriftTotal(); drift && *drift != 0)
      note("drift: " + std::to_string(*drift) + " entries; `p11ha verify` names them, `p11ha sync` repairs them");
  }
  out << "\n"
      << report.UpCount() << " of " << report.members.size() << " members up; "
      << (report.Healthy() ? "ok" : "PROBLEM") << "\n";
}

void PrintJson(const StatusReport& report, std::ostream& out) {
  auto str_or_null = [](const std::string& s) { return s.empty() ? std::string("null") : JsonString(s); };
  out << "{\n"
      << "  \"config\": " << JsonString(report.config_path) << ",\n"
      << "  \"cluster\": {\"label\": " << JsonString(report.cluster_label) << ", \"slot_id\": " << report.slot_id
      << ", \"policy\": " << JsonString(report.policy) << "},\n"
      << "  \"logged_in\": " << (report.logged_in ? "true" : "false") << ",\n"
      << "  \"members\": [";
  for (std::size_t i = 0; i < report.members.size(); ++i) {
    const MemberReport& m = report.members[i];
    out << (i == 0 ? "\n" : ",\n") << "    {\"name\": " << JsonString(m.name)
        << ", \"kind\": " << (m.remote.empty() ? "\"module\"" : "\"remote\"")
        << ", \"module\": " << str_or_null(m.module) << ", \"remote\": " << str_or_null(m.remote)
        << ", \"token_uri\": " << JsonString(m.token_uri) << ",\n"
        << "     \"role\": " << (m.standby ? "\"standby\"" : "\"active\"")
        << ", \"state\": " << JsonString(m.state) << ", \"since\": " << JsonString(m.since)
        << ", \"failures\": " << m.failures << ", \"last_error\": " << str_or_null(m.last_error);
    if (m.up) {
      out << ",\n     \"token\": {\"label\": " << JsonString(m.label) << ", \"serial\": " << JsonString(m.serial)
          << ", \"model\": " << JsonString(m.model) << "}"
          << ",\n     \"mechanisms\": " << m.mechanisms << ", \"latency_ms\": " << Milliseconds(m.latency_ms)
          << ", \"objects\": " << (m.objects ? std::to_string(*m.objects) : "null")
          << ", \"objects_note\": " << str_or_null(m.objects_note) << ", \"domain\": " << str_or_null(m.domain)
          << ", \"local_keys\": [";
      for (std::size_t k = 0; k < m.local_keys.size(); ++k) out << (k ? ", " : "") << JsonString(m.local_keys[k]);
      out << "], \"drift\": " << (m.drift ? std::to_string(*m.drift) : "null") << ", \"error\": null}";
    } else {
      out << ",\n     \"token\": null, \"mechanisms\": null, \"latency_ms\": null, \"objects\": null"
          << ", \"objects_note\": null, \"error\": " << JsonString(m.error.empty() ? "(no reason recorded)" : m.error)
          << "}";
    }
  }
  out << (report.members.empty() ? "],\n" : "\n  ],\n") << "  \"members_up\": " << report.UpCount()
      << ",\n  \"members_total\": " << report.members.size() << ",\n  \"drift\": "
      << (report.DriftTotal() ? std::to_string(*report.DriftTotal()) : "null") << ",\n  \"ok\": " << (report.Healthy() ? "true" : "false")
      << "\n}\n";
}

}  // namespace p11ha::cli
