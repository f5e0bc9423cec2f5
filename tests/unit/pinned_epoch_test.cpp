// SPDX-License-Identifier: Apache-2.0
#include "provider/member/pinned_epoch.h"

#include <catch2/catch.hpp>
#include <thread>

namespace p11ha {
namespace {

TEST_CASE("pinned epoch: a call pinned to an earlier instance of its member is stale, others are not") {
  int member_a = 0, member_b = 0;  // only their addresses matter
  CHECK_FALSE(PinnedEpoch::Stale(&member_a, 7));  // nothing pinned: a probe or a copy thread
  CHECK(PinnedEpoch::Of(&member_a, 7) == 7);
  {
    PinnedEpoch pin(&member_a, 3);
    CHECK_FALSE(PinnedEpoch::Stale(&member_a, 3));
    CHECK(PinnedEpoch::Stale(&member_a, 4));        // member a restarted since the handles were looked up
    CHECK_FALSE(PinnedEpoch::Stale(&member_b, 9));  // calls to other members (a fan-out) pass
    CHECK(PinnedEpoch::Of(&member_a, 4) == 3);
    {
      PinnedEpoch inner(&member_b, 9);
      CHECK_FALSE(PinnedEpoch::Stale(&member_a, 4));  // hidden by the inner pin
      CHECK(PinnedEpoch::Stale(&member_b, 10));
    }
    CHECK(PinnedEpoch::Stale(&member_a, 4));  // the outer pin is back
    bool stale_elsewhere = true;
    std::thread([&] { stale_elsewhere = PinnedEpoch::Stale(&member_a, 4); }).join();
    CHECK_FALSE(stale_elsewhere);  // a pin belongs to its thread
  }
  CHECK_FALSE(PinnedEpoch::Stale(&member_a, 4));
}

}  // namespace
}  // namespace p11ha
