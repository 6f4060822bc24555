"""Options of the inbound data plane that size its maps."""

from __future__ import annotations

import pytest

from sentinel_ebpf.inbound import InboundDataplane

pytestmark = pytest.mark.kernel("inbound")


def test_hotspot_values_sizes_the_lru_map() -> None:
    with InboundDataplane(hotspot_values=2048) as dp:
        assert dp.obj.map("hot_values").max_entries == 2048
    with InboundDataplane() as dp:
        assert dp.obj.map("hot_values").max_entries == 262144


@pytest.mark.parametrize("n", [0, 1023, (1 << 24) + 1])
def test_hotspot_values_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="hotspot_values must be in 1024"):
        InboundDataplane(hotspot_values=n)
