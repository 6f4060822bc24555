"""The test tiers (unit, dataplane, integration, reliability) and tests.support, shared with bench/."""
