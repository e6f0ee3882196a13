"""The shared test-support package: what more than one test directory needs is written here
once (paths, polling, daemon stop, packet checksums, the tier prerequisite policy, the lab's
reachability-matrix assertion). A test directory's own helpers stay beside its tests."""
