#!/usr/bin/env bash
# Builds Bulkhead for release with the Swift runtime linked in (--static-swift-stdlib) and installs
# it on this host:
#   PREFIX/bin/bulkhead, PREFIX/bin/bulkhead-vmm   (together: the daemon starts the VMM next to itself)
#   CONFIG_DIR/host.json                           (the example deploy/host.json, only if none exists)
#   /etc/systemd/system/bulkhead.service           (deploy/bulkhead.service with PREFIX and CONFIG_DIR)
#   /etc/systemd/system/bulkhead.service.d/paths.conf (the configuration's state and log paths made writable)
#   PREFIX/share/bulkhead/bulkhead.service         (the same unit, also with --no-systemd)
#   PREFIX/share/doc/bulkhead/README.md
# and creates the state directory. Idempotent: a second run changes nothing but the binaries
# (rebuilt when the sources changed) and never touches an existing configuration.
#
# Usage: deploy/install.sh [--prefix /usr/local] [--config-dir /etc/bulkhead] [--no-systemd] [--skip-build]
#   --no-systemd  install no unit under /etc/systemd (containers, hosts without systemd)
#   --skip-build  install what the last build left in .build-static (no Swift toolchain needed)
set -euo pipefail

prefix=/usr/local
config_dir=/etc/bulkhead
systemd=1
build=1
usage() { sed -n 's/^# Usage: //p' "$0"; }
while (($#)); do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --config-dir) config_dir=${2:?--config-dir needs a directory}; shift 2 ;;
    --config-dir=*) config_dir=${1#*=}; shift ;;
    --no-systemd) systemd=0; shift ;;
    --skip-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 64 ;;
  esac
done
for dir in "$prefix" "$config_dir"; do
  [[ $dir == /* ]] || { echo "install.sh: '$dir' is not an absolute path" >&2; exit 64; }
done
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root: it installs into $prefix and $config_dir and creates the state directory" >&2
  exit 1
fi

cd "$(dirname "$0")/.."
repo=$(pwd)
# Its own build directory: a static-runtime build in .build would rebuild everything there each
# time deploy/demo.sh or the tests build it the other way.
scratch=$repo/.build-static
did() { printf '  %s\n' "$*"; }

if ((build)); then
  if ! command -v swift >/dev/null; then
    [ -x /opt/swift/usr/bin/swift ] && export PATH=/opt/swift/usr/bin:$PATH
  fi
  command -v swift >/dev/null || { echo "install.sh: no Swift toolchain in PATH (needed to build; --skip-build installs an earlier build)" >&2; exit 1; }
  echo "building (release, Swift runtime linked in) in $scratch"
  start=$(date +%s)
  for product in bulkhead bulkhead-vmm; do
    swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product "$product"
  done
  echo "built in $(( $(date +%s) - start )) s"
fi
bin=$scratch/release
for product in bulkhead bulkhead-vmm; do
  [ -x "$bin/$product" ] || { echo "install.sh: $bin/$product is missing: build first (without --skip-build)" >&2; exit 1; }
  # Only the system's libraries may remain dynamic (libc, liburing, libnl, libcrypto): a missing
  # one is named here rather than at the first start.
  if missing=$(ldd "$bin/$product" | grep 'not found'); then
    echo "install.sh: $product needs libraries this host lacks:" >&2; echo "$missing" >&2; exit 1
  fi
done

echo "installing"
install -d -m 0755 "$prefix/bin" "$prefix/share/bulkhead" "$prefix/share/doc/bulkhead"
for product in bulkhead bulkhead-vmm; do
  # install(1) writes a new file and renames it: a running daemon keeps its old executable.
  install -m 0755 "$bin/$product" "$prefix/bin/$product"
  did "$prefix/bin/$product"
done
install -m 0644 README.md "$prefix/share/doc/bulkhead/README.md"
did "$prefix/share/doc/bulkhead/README.md"

install -d -m 0750 "$config_dir"
config=$config_dir/host.json
if [ -e "$config" ]; then
  did "$config (kept: it exists)"
else
  install -m 0640 deploy/host.json "$config"
  did "$config (the example: edit it before starting)"
fi

# The configuration's paths: the unit must let the daemon write them (ProtectSystem=strict).
# Read with the installed binary's own validation first: a broken configuration stops here.
if ! "$prefix/bin/bulkhead" validate --config "$config" >/dev/null; then
  echo "install.sh: $config is not valid (see above); fix it and run install.sh --skip-build again" >&2
  exit 1
fi
json_string() {  # json_string KEY FILE: the first "KEY": "value" in FILE
  sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n1
}
state=$(json_string stateDirectory "$config")
audit=$(json_string auditLog "$config")
control=$(json_string controlSocket "$config")
# Relative paths are inside the state directory (the configuration's rule).
abs() { case "$1" in /*) echo "$1" ;; "") echo "" ;; *) echo "$state/$1" ;; esac; }
audit=$(abs "$audit"); control=$(abs "$control")
writable=("$state")
for file in "$audit" "$control"; do
  [ -n "$file" ] || continue
  dir=$(dirname "$file")
  [[ " ${writable[*]} " == *" $dir "* ]] || writable+=("$dir")
done

# Created where missing; an existing directory keeps its owner and mode.
make_dir() {  # make_dir MODE DIR WHAT
  if [ -d "$2" ]; then did "$2 ($3; exists)"; else install -d -m "$1" "$2"; did "$2 ($3)"; fi
}
make_dir 0711 "$state" "state directory"
make_dir 0700 "$state/images" "partition kernels and images"
for dir in "${writable[@]:1}"; do
  [ "$dir" = "$state" ] || make_dir 0700 "$dir" "written by the daemon"
done

render_unit() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@CONFIG_DIR@|$config_dir|g" deploy/bulkhead.service
}
render_unit >"$prefix/share/bulkhead/bulkhead.service"
chmod 0644 "$prefix/share/bulkhead/bulkhead.service"
did "$prefix/share/bulkhead/bulkhead.service"
paths_conf="# Written by deploy/install.sh from $config: the paths the daemon writes.
# Run install.sh --skip-build again after changing them there.
[Service]
ReadWritePaths=$(printf -- '-%s ' "${writable[@]}" | sed 's/ $//')"

if ((systemd)); then
  unit=/etc/systemd/system/bulkhead.service
  install -d -m 0755 /etc/systemd/system/bulkhead.service.d
  if [ -e "$unit" ] && cmp -s "$unit" "$prefix/share/bulkhead/bulkhead.service"; then
    did "$unit (unchanged)"
  else
    install -m 0644 "$prefix/share/bulkhead/bulkhead.service" "$unit"
    did "$unit"
  fi
  printf '%s\n' "$paths_conf" >/etc/systemd/system/bulkhead.service.d/paths.conf
  did "/etc/systemd/system/bulkhead.service.d/paths.conf (ReadWritePaths: ${writable[*]})"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    did "systemctl daemon-reload"
  else
    did "(systemd is not running here: no daemon-reload)"
  fi
fi

cat <<EOF

Installed. Next:
  1. Edit $config: principals (uids), tenants, and each partition's kernel, initrd
     and their sha256 (sha256sum FILE); put the images under $state/images.
  2. $prefix/bin/bulkhead validate --config $config
EOF
if ((systemd)); then
  cat <<EOF
  3. systemctl enable --now bulkhead      (logs: journalctl -u bulkhead)
  4. $prefix/bin/bulkhead ctl --help      (manage; the caller's uid decides what it may do)
EOF
else
  cat <<EOF
  3. $prefix/bin/bulkhead run --config $config      (no systemd unit installed: --no-systemd)
EOF
fi
