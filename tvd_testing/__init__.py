"""Test harnesses that users can run on their own CI (see docs/test-tiers.md)."""
