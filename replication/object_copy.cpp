// SPDX-License-Identifier: Apache-2.0
#include "replication/object_copy.h"

#include <algorithm>
#include <cstdio>

#include "replication/object_identity.h"

namespace p11ha::replication {
namespace {

[[noreturn]] void Fail(TokenSession& token, const std::string& step, CK_RV rv, bool store_refused = false) {
  char code[24];
  std::snprintf(code, sizeof code, "0x%08lX", static_cast<unsigned long>(rv));
  throw CopyError(token.name() + ": " + step + " failed (" + code + ")", rv, store_refused);
}

AttributeList TemplateOf(const AttributeList& read) {
  AttributeList kept;
  for (const Attribute& attribute : read)
    if (!DropFromTemplate(attribute)) kept.push_back(attribute);
  return kept;
}

void DestroyQuietly(TokenSession& token, CK_OBJECT_HANDLE object) { token.DestroyObject(object); }

}  // namespace

CopyPlan PrepareCopy(TokenSession& source, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                     std::optional<CK_OBJECT_CLASS> object_class) {
  CK_RV rv;
  if (!object_class) {
    static constexpr CK_ATTRIBUTE_TYPE kClass[] = {CKA_CLASS};
    AttributeList head;
    rv = ReadAttributes(source, object, kClass, head);
    if (rv != CKR_OK) Fail(source, "reading the object's class", rv);
    object_class = ScalarOf<CK_OBJECT_CLASS>(head, CKA_CLASS);
    if (!object_class) Fail(source, "reading the object's class", CKR_OBJECT_HANDLE_INVALID);
  }

  CopyPlan plan;
  plan.object_class = *object_class;
  plan.by_wrap = IsKeyClass(plan.object_class);
  AttributeList read;
  rv = ReadAttributes(source, object, CopiedAttributes(plan.object_class), read);
  if (rv != CKR_OK) Fail(source, "reading the object's attributes", rv);
  plan.attributes = TemplateOf(read);
  if (plan.by_wrap) {
    if (domain_key == CK_INVALID_HANDLE) Fail(source, "finding the domain key", CKR_WRAPPING_KEY_HANDLE_INVALID);
    rv = source.WrapKey(CKM_AES_KEY_WRAP_PAD, domain_key, object, plan.wrapped);
    if (rv != CKR_OK) Fail(source, "C_WrapKey under the domain key", rv);
  }
  return plan;
}

std::span<const CK_ATTRIBUTE_TYPE> PinnedByUnwrapTemplate() {
  static constexpr CK_ATTRIBUTE_TYPE kPinned[] = {CKA_PRIVATE, CKA_SENSITIVE, CKA_WRAP_WITH_TRUSTED};
  return kPinned;
}

std::string UncopyableBecause(const AttributeList& attributes) {
  std::string missing;
  for (CK_ATTRIBUTE_TYPE type : PinnedByUnwrapTemplate()) {
    if (ScalarOf<CK_BBOOL>(attributes, type).value_or(CK_TRUE) == CK_TRUE) continue;
    missing += missing.empty() ? "" : ", ";
    missing += type == CKA_PRIVATE ? "CKA_PRIVATE" : type == CKA_SENSITIVE ? "CKA_SENSITIVE" : "CKA_WRAP_WITH_TRUSTED";
  }
  if (missing.empty()) return {};
  return "cannot be copied: the domain key unwraps only keys with CKA_PRIVATE, CKA_SENSITIVE and "
         "CKA_WRAP_WITH_TRUSTED set, as p11ha makes them, and this key lacks " + missing;
}

CK_OBJECT_HANDLE ApplyCopy(const CopyPlan& plan, TokenSession& target, CK_OBJECT_HANDLE domain_key) {
  AttributeList attributes = plan.attributes;
  std::vector<CK_ATTRIBUTE> attribute_template = AsTemplate(attributes);
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  if (plan.by_wrap) {
    if (domain_key == CK_INVALID_HANDLE) Fail(target, "finding the domain key", CKR_UNWRAPPING_KEY_HANDLE_INVALID);
    std::vector<CK_BYTE> again;
    CK_RV again_rv = CKR_GENERAL_ERROR;
    CK_RV rv = target.UnwrapAndRewrap(CKM_AES_KEY_WRAP_PAD, domain_key, plan.wrapped, attribute_template, copy,
                                      again_rv, again);
    if (rv != CKR_OK) Fail(target, "C_UnwrapKey under the domain key", rv, rv == CKR_GENERAL_ERROR);
    rv = again_rv;
    if (rv != CKR_OK || again != plan.wrapped) {
      DestroyQuietly(target, copy);
      Fail(target, "verifying the copy (re-wrapped bytes differ)", rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
    }
    return copy;
  }
  CK_RV rv = target.CreateObject(attribute_template, copy);
  if (rv != CKR_OK) Fail(target, "C_CreateObject", rv, rv == CKR_GENERAL_ERROR);
  std::vector<CK_ATTRIBUTE_TYPE> types;
  for (const Attribute& attribute : plan.attributes) types.push_back(attribute.type);
  AttributeList back;
  rv = ReadAttributes(target, copy, types, back);
  bool equal = rv == CKR_OK && back.size() == plan.attributes.size() &&
               std::equal(back.begin(), back.end(), plan.attributes.begin(),
                          [](const Attribute& a, const Attribute& b) { return a.type == b.type && a.value == b.value; });
  if (!equal) {
    DestroyQuietly(target, copy);
    Fail(target, "verifying the copy (attributes differ)", rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
  }
  return copy;
}

}  // namespace p11ha::replication
