"""eBPF for the per-packet paths: a small assembler, the bpf() calls, and the programs.

Why a Python assembler and not C through clang/BCC: the programs are small, generated per vif
with its addresses as immediates (like the nftables rules they replace), and a Dom0 should not
need LLVM to plug a vif (docs/port-security-ebpf.md).
"""
