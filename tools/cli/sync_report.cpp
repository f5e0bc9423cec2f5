// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/sync_report.h"

#include <algorithm>

#include "replication/object_identity.h"
#include "tools/cli/json.h"

namespace p11ha::cli {
namespace {

using replication::ActionState;
using replication::DriftEntry;
using replication::MemberReconcileReport;
using replication::ReconcileReport;

// Enough of the identity to tell objects apart in a listing and to grep for.
std::string ShortIdentity(const std::string& identity) {
  return identity.empty() ? std::string() : replication::IdentityHex(identity).substr(0, 16);
}

std::string EntryLine(const DriftEntry& entry) {
  std::string line = std::string(replication::DriftKindName(entry.kind)) + ":";
  if (!entry.object.empty()) line += " " + entry.object;
  if (!entry.identity.empty()) line += " [" + ShortIdentity(entry.identity) + "]";
  if (!entry.detail.empty()) line += entry.object.empty() ? " " + entry.detail : " (" + entry.detail + ")";
  switch (entry.state) {
    case ActionState::kNone:
      if (entry.drift && entry.kind != replication::DriftKind::kMemberDown) line += "; not repaired";
      break;
    case ActionState::kPlanned: line += " -> would " + entry.action; break;
    case ActionState::kDone: line += " -> " + entry.action + ": done"; break;
    case ActionState::kFailed: line += " -> " + entry.action + ": FAILED: " + entry.error; break;
  }
  if (entry.state != ActionState::kFailed && !entry.error.empty()) line += ": " + entry.error;
  return line;
}

std::string MemberHeading(const MemberReconcileReport& member) {
  std::string heading = member.name + ": ";
  heading += member.checked ? std::to_string(member.objects) + " objects" : "not checked";
  bool drift = std::any_of(member.entries.begin(), member.entries.end(), [](const DriftEntry& e) { return e.drift; });
  if (!drift) heading += ", no drift";
  return heading;
}

struct Counts {
  std::size_t drift = 0, repaired = 0, planned = 0, left = 0;
  std::vector<std::string> members;  // with drift left
};

Counts Count(const ReconcileReport& report) {
  Counts counts;
  for (const MemberReconcileReport& member : report.members) {
    bool left = false;
    for (const DriftEntry& entry : member.entries) {
      if (!entry.drift) continue;
      ++counts.drift;
      if (entry.state == ActionState::kDone) ++counts.repaired;
      if (entry.state == ActionState::kPlanned) ++counts.planned;
      if (entry.Unresolved()) {
        ++counts.left;
        left = true;
      }
    }
    if (left) counts.members.push_back(member.name);
  }
  return counts;
}

std::string Join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

}  // namespace

void PrintReconcileText(const SyncContext& context, const ReconcileReport& report, std::ostream& out) {
  out << "cluster \"" << context.cluster_label << "\", " << report.members.size() << " members, "
      << (context.domain.empty() ? "no domain key" : "domain " + context.domain) << ", config "
      << context.config_path << (report.dry_run ? " (dry run: nothing is changed)" : "") << "\n";
  for (const MemberReconcileReport& member : report.members) {
    out << MemberHeading(member) << "\n";
    for (const DriftEntry& entry : member.entries) out << "  " << EntryLine(entry) << "\n";
  }
  Counts counts = Count(report);
  out << context.verb << ": ";
  if (counts.drift == 0) {
    out << "no drift\n";
  } else if (report.dry_run) {
    out << counts.drift << " drift entries on " << Join(counts.members) << " (" << counts.planned
        << " repairable by p11ha sync); DRIFT\n";
  } else {
    out << counts.drift << " drift entries, " << counts.repaired << " repaired, " << counts.left << " left\n";
  }
}

void PrintRemainingText(const ReconcileReport& check, std::ostream& out) {
  Counts counts = Count(check);
  if (counts.drift == 0) {
    out << "after sync: consistent\n";
    return;
  }
  out << "after sync: " << counts.drift << " drift entries remain on " << Join(counts.members) << "; DRIFT\n";
  for (const MemberReconcileReport& member : check.members)
    for (const DriftEntry& entry : member.entries)
      if (entry.drift) out << "  " << member.name << ": " << EntryLine(entry) << "\n";
}

void PrintReconcileJson(const SyncContext& context, const ReconcileReport& report, bool ok, std::ostream& out) {
  auto str_or_null = [](const std::string& s) { return s.empty() ? std::string("null") : JsonString(s); };
  out << "{\n"
      << "  \"config\": " << JsonString(context.config_path) << ",\n"
      << "  \"cluster\": " << JsonString(context.cluster_label) << ",\n"
      << "  \"domain\": " << str_or_null(context.domain) << ",\n"
      << "  \"dry_run\": " << (report.dry_run ? "true" : "false") << ",\n"
      << "  \"members\": [";
  for (std::size_t i = 0; i < report.members.size(); ++i) {
    const MemberReconcileReport& member = report.members[i];
    out << (i == 0 ? "\n" : ",\n") << "    {\"name\": " << JsonString(member.name)
        << ", \"checked\": " << (member.checked ? "true" : "false")
        << ", \"objects\": " << (member.checked ? std::to_string(member.objects) : "null") << ", \"entries\": [";
    for (std::size_t k = 0; k < member.entries.size(); ++k) {
      const DriftEntry& e = member.entries[k];
      out << (k == 0 ? "\n" : ",\n") << "      {\"kind\": " << JsonString(replication::DriftKindName(e.kind))
          << ", \"drift\": " << (e.drift ? "true" : "false") << ", \"object\": " << str_or_null(e.object)
          << ", \"identity\": " << str_or_null(e.identity.empty() ? "" : replication::IdentityHex(e.identity))
          << ",\n       \"detail\": " << str_or_null(e.detail) << ", \"action\": " << str_or_null(e.action)
          << ", \"state\": " << JsonString(replication::ActionStateName(e.state))
          << ", \"error\": " << str_or_null(e.error) << "}";
    }
    out << (member.entries.empty() ? "]}" : "\n    ]}");
  }
  out << (report.members.empty() ? "],\n" : "\n  ],\n") << "  \"drift\": " << (report.Drift() ? "true" : "false")
      << ",\n  \"ok\": " << (ok ? "true" : "false") << "\n}\n";
}

}  // namespace p11ha::cli
