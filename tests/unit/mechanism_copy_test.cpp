// SPDX-License-Identifier: Apache-2.0
#include <catch2/catch.hpp>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "provider/core/replay.h"

namespace p11ha {
namespace {

TEST_CASE("mechanism copy: a GCM parameter outlives the application's buffers and survives being moved") {
  std::vector<CK_BYTE> iv(12, 0x11), aad = {'h', 'e', 'a', 'd'};
  CK_GCM_PARAMS gcm{iv.data(), iv.size(), 96, aad.data(), aad.size(), 128};
  CK_MECHANISM mechanism{CKM_AES_GCM, &gcm, sizeof gcm};
  std::optional<MechanismCopy> copy = MechanismCopy::Of(mechanism);
  REQUIRE(copy);
  // The application reuses its buffers for the next call.
  std::fill(iv.begin(), iv.end(), CK_BYTE{0});
  std::fill(aad.begin(), aad.end(), CK_BYTE{0});
  gcm.ulTagBits = 0;

  // Where an operation keeps it: moved into the operation, and the operation into the session.
  std::optional<MechanismCopy> kept = std::move(copy);
  std::vector<MechanismCopy> moved;
  moved.push_back(std::move(*kept));
  moved.reserve(8);  // reallocates: the copy moves once more

  const CK_MECHANISM* held = moved.front().get();
  CHECK(held->mechanism == CKM_AES_GCM);
  REQUIRE(held->ulParameterLen == sizeof(CK_GCM_PARAMS));
  const auto* params = static_cast<const CK_GCM_PARAMS*>(held->pParameter);
  CHECK(params != &gcm);
  CHECK(params->ulTagBits == 128);
  REQUIRE(params->ulIvLen == 12);
  CHECK(params->pIv != iv.data());
  CHECK(std::vector<CK_BYTE>(params->pIv, params->pIv + 12) == std::vector<CK_BYTE>(12, 0x11));
  REQUIRE(params->ulAADLen == 4);
  CHECK(std::memcmp(params->pAAD, "head", 4) == 0);
}

TEST_CASE("mechanism copy: no parameter, a flat one, and ones that cannot be kept") {
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  auto plain = MechanismCopy::Of(ecdsa);
  REQUIRE(plain);
  CHECK(plain->type() == CKM_ECDSA);
  CHECK(plain->get()->pParameter == nullptr);
  CHECK(plain->get()->ulParameterLen == 0);

  CK_BYTE iv[16] = {1, 2, 3};
  CK_MECHANISM cbc{CKM_AES_CBC_PAD, iv, sizeof iv};
  auto flat = MechanismCopy::Of(cbc);
  REQUIRE(flat);
  iv[0] = 9;
  CHECK(static_cast<const CK_BYTE*>(flat->get()->pParameter)[0] == 1);

  CK_GCM_PARAMS gcm{};
  CK_MECHANISM short_gcm{CKM_AES_GCM, &gcm, sizeof gcm - 1};
  CHECK_FALSE(MechanismCopy::Of(short_gcm));

  // A structure with pointers that p11ha does not know how to copy deeply.
  CK_BYTE point[65] = {4};
  CK_ECDH1_DERIVE_PARAMS ecdh{CKD_NULL, 0, nullptr, sizeof point, point};
  CK_MECHANISM derive{CKM_ECDH1_DERIVE, &ecdh, sizeof ecdh};
  CHECK_FALSE(MechanismCopy::Of(derive));
}

}  // namespace
}  // namespace p11ha
