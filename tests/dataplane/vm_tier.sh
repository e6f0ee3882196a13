#!/bin/sh
# Run the 8021q-gated dataplane tests (test_vlan*.py) in the stock Debian kernel under qemu/TCG.
# Needs: linux-image-amd64, qemu-system-x86, busybox-static, virtme-ng (`vng` on PATH).
# Usage: tests/dataplane/vm_tier.sh [python]   (python must have pyroute2 + pytest; default:
# .venv/bin/python if present, else python3; the host root is shared read-only). ~5 min.
set -eu
cd "$(dirname "$0")/../.."
PY=${1:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3)}
KERNEL=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1)
OUT=$(mktemp -d)
cat > "$OUT/run.sh" <<INNER
#!/bin/sh
modprobe 8021q; modprobe vxlan; modprobe bridge; modprobe veth
mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
cd "$PWD"
PYTHONDONTWRITEBYTECODE=1 "$PY" -m pytest -p no:cacheprovider tests/dataplane/test_vlan*.py -q -rs > "$OUT/result.txt" 2>&1
echo "rc=\$?" >> "$OUT/result.txt"
INNER
chmod +x "$OUT/run.sh"
vng -r "$KERNEL" --disable-kvm -m 2G -p 2 --rwdir="$OUT" -- "$OUT/run.sh" >/dev/null 2>&1 || true
cat "$OUT/result.txt"
grep -q '^rc=0$' "$OUT/result.txt"
