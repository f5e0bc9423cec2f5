// SPDX-License-Identifier: Apache-2.0
// Key management and random numbers (PKCS#11 2.40 §5.14-5.15).
#include "provider/core/error.h"
#include "provider/core/module.h"
#include "provider/member/token_calls.h"

namespace p11ha {
namespace {

bool BadTemplate(CK_ATTRIBUTE_PTR attrs, CK_ULONG count) { return attrs == nullptr && count > 0; }

}  // namespace

CK_RV Module::GenerateKey(CK_SESSION_HANDLE handle, CK_MECHANISM_PTR mechanism, CK_ATTRIBUTE_PTR attrs,
                          CK_ULONG count, CK_OBJECT_HANDLE_PTR out) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr || BadTemplate(attrs, count) || out == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  std::span<const CK_ATTRIBUTE> requested(attrs, count);
  const bool token = replication::TemplateSaysToken(requested, false);
  replication::Birth birth;
  if (CK_RV rv = BirthOf(requested, token, replication::BirthCall::kCreate, "C_GenerateKey", birth); rv != CKR_OK)
    return rv;
  const auto names = replication::NamesOfCreation(token, requested, CKO_SECRET_KEY);
  return Failover(
      *session, ~std::uint64_t{0}, "C_GenerateKey",
      [&](const Route& route) {
        if (token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV rv = CheckKeyCreation(*route.member, "C_GenerateKey"); rv != CKR_OK) return rv;
        auto create = [mechanism, attrs = birth.attributes.data(), count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_GenerateKey, on, mechanism, attrs, count, &made[0]);
        };
        const CK_RV rv = Replicate(route, "C_GenerateKey", create, birth.verdict, *session, {out, 1});
        return CreationFailed(route, rv, names);
      },
      Choice::kFirst, SessionUse::kObjects);
}

CK_RV Module::GenerateKeyPair(CK_SESSION_HANDLE handle, CK_MECHANISM_PTR mechanism, CK_ATTRIBUTE_PTR pub,
                              CK_ULONG pub_count, CK_ATTRIBUTE_PTR priv, CK_ULONG priv_count,
                              CK_OBJECT_HANDLE_PTR pub_out, CK_OBJECT_HANDLE_PTR priv_out) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr || BadTemplate(pub, pub_count) || BadTemplate(priv, priv_count) || pub_out == nullptr ||
      priv_out == nullptr)
    return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  std::span<const CK_ATTRIBUTE> public_template(pub, pub_count), private_template(priv, priv_count);
  const bool token = replication::TemplateSaysToken(private_template, false) ||
                     replication::TemplateSaysToken(public_template, false);
  if (CK_RV rv = CheckReservedNames(public_template); rv != CKR_OK) return rv;
  replication::Birth birth;
  if (CK_RV rv = BirthOf(private_template, replication::TemplateSaysToken(private_template, false),
                         replication::BirthCall::kCreate, "C_GenerateKeyPair", birth);
      rv != CKR_OK)
    return rv;
  auto names = replication::NamesOfCreation(replication::TemplateSaysToken(public_template, false), public_template,
                                            CKO_PUBLIC_KEY);
  for (auto& name : replication::NamesOfCreation(replication::TemplateSaysToken(private_template, false),
                                                 private_template, CKO_PRIVATE_KEY))
    names.push_back(std::move(name));
  CK_OBJECT_HANDLE virtual_handles[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
  CK_RV rv = Failover(
      *session, ~std::uint64_t{0}, "C_GenerateKeyPair",
      [&](const Route& route) {
        if (token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV answer = CheckKeyCreation(*route.member, "C_GenerateKeyPair"); answer != CKR_OK) return answer;
        auto create = [mechanism, pub, pub_count, priv = birth.attributes.data(),
                       priv_count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_GenerateKeyPair, on, mechanism, pub, pub_count, priv, priv_count,
                              &made[0], &made[1]);
        };
        const CK_RV answer = Replicate(route, "C_GenerateKeyPair", create, birth.verdict, *session, virtual_handles);
        return CreationFailed(route, answer, names);
      },
      Choice::kFirst, SessionUse::kObjects);
  if (rv != CKR_OK) return rv;
  *pub_out = virtual_handles[0];
  *priv_out = virtual_handles[1];
  return CKR_OK;
}

CK_RV Module::WrapKey(CK_SESSION_HANDLE handle, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE wrapping,
                      CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr || out_len == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView wrapper = ObjectOrThrow(wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID);
  ObjectView wrapped = ObjectOrThrow(key, CKR_KEY_HANDLE_INVALID);
  return Failover(*session, HolderMask(wrapper) & HolderMask(wrapped), "C_WrapKey", [&](const Route& route) {
    CK_OBJECT_HANDLE member_wrapper = Held(wrapper, route), member_key = Held(wrapped, route);
    if (member_wrapper == CK_INVALID_HANDLE || member_key == CK_INVALID_HANDLE) return kNotHere;
    return route.member->Call("C_WrapKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_WrapKey, route.session, mechanism,
                              member_wrapper, member_key, out, out_len);
  });
}

CK_RV Module::UnwrapKey(CK_SESSION_HANDLE handle, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE unwrapping,
                        CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR attrs, CK_ULONG count,
                        CK_OBJECT_HANDLE_PTR out) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr || wrapped == nullptr || BadTemplate(attrs, count) || out == nullptr)
    return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView unwrapper = ObjectOrThrow(unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID);
  std::span<const CK_ATTRIBUTE> requested(attrs, count);
  const bool token = replication::TemplateSaysToken(requested, false);
  replication::Birth birth;
  if (CK_RV rv = BirthOf(requested, token, replication::BirthCall::kCreate, "C_UnwrapKey", birth); rv != CKR_OK)
    return rv;
  const auto names = replication::NamesOfCreation(token, requested, std::nullopt);
  return Failover(
      *session, HolderMask(unwrapper), "C_UnwrapKey",
      [&](const Route& route) {
        CK_OBJECT_HANDLE member_unwrapper = Held(unwrapper, route);
        if (member_unwrapper == CK_INVALID_HANDLE) return kNotHere;
        if (token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV rv = CheckKeyCreation(*route.member, "C_UnwrapKey"); rv != CKR_OK) return rv;
        auto create = [mechanism, member_unwrapper, wrapped, wrapped_len, attrs = birth.attributes.data(),
                       count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_UnwrapKey, on, mechanism, member_unwrapper, wrapped, wrapped_len,
                              attrs, count, &made[0]);
        };
        const CK_RV rv = Replicate(route, "C_UnwrapKey", create, birth.verdict, *session, {out, 1});
        return CreationFailed(route, rv, names);
      },
      Choice::kBalanced, SessionUse::kObjects);
}

CK_RV Module::DeriveKey(CK_SESSION_HANDLE handle, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE base,
                        CK_ATTRIBUTE_PTR attrs, CK_ULONG count, CK_OBJECT_HANDLE_PTR out) {
  auto session = SessionOrThrow(handle);
  if (mechanism == nullptr || BadTemplate(attrs, count) || out == nullptr) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  ObjectView base_key = ObjectOrThrow(base, CKR_KEY_HANDLE_INVALID);
  std::span<const CK_ATTRIBUTE> requested(attrs, count);
  const bool token = replication::TemplateSaysToken(requested, false);
  replication::Birth birth;
  if (CK_RV rv = BirthOf(requested, token, replication::BirthCall::kCreate, "C_DeriveKey", birth); rv != CKR_OK)
    return rv;
  const auto names = replication::NamesOfCreation(token, requested, CKO_SECRET_KEY);
  return Failover(
      *session, HolderMask(base_key), "C_DeriveKey",
      [&](const Route& route) {
        CK_OBJECT_HANDLE member_base = Held(base_key, route);
        if (member_base == CK_INVALID_HANDLE) return kNotHere;
        if (token && birth.verdict == replication::BirthVerdict::kReplicate)
          if (CK_RV rv = CheckKeyCreation(*route.member, "C_DeriveKey"); rv != CKR_OK) return rv;
        auto create = [mechanism, member_base, attrs = birth.attributes.data(), count = CK_ULONG{birth.attributes.size()}](
                          const CK_FUNCTION_LIST& f, CK_SESSION_HANDLE on, std::span<CK_OBJECT_HANDLE> made) {
          return CallStraight(f, &CK_FUNCTION_LIST::C_DeriveKey, on, mechanism, member_base, attrs, count, &made[0]);
        };
        const CK_RV rv = Replicate(route, "C_DeriveKey", create, birth.verdict, *session, {out, 1});
        return CreationFailed(route, rv, names);
      },
      Choice::kBalanced, SessionUse::kObjects);
}

CK_RV Module::SeedRandom(CK_SESSION_HANDLE handle, CK_BYTE_PTR seed, CK_ULONG len) {
  auto session = SessionOrThrow(handle);
  if (seed == nullptr && len > 0) return CKR_ARGUMENTS_BAD;
  std::lock_guard lock(session->mutex());
  return Failover(*session, ~std::uint64_t{0}, "C_SeedRandom", [&](const Route& route) {
    return route.member->Call("C_SeedRandom", CallKind::kParallel, &CK_FUNCTION_LIST::C_SeedRandom, route.session,
                              seed, len);
  });
}

CK_RV Module::GenerateRandom(CK_SESSION_HANDLE handle, CK_BYTE_PTR out, CK_ULONG len) {
  auto session = SessionOrThrow(handle);
  if (out == nullptr && len > 0) return CKR_ARGUMENTS_BAD;
  // Nothing to ask a member for; p11-kit 0.24 remote members would even refuse length 0.
  if (len == 0) return CKR_OK;
  std::lock_guard lock(session->mutex());
  return Failover(*session, ~std::uint64_t{0}, "C_GenerateRandom", [&](const Route& route) {
    return route.member->Call("C_GenerateRandom", CallKind::kParallel, &CK_FUNCTION_LIST::C_GenerateRandom,
                              route.session, out, len);
  });
}

}  // namespace p11ha
