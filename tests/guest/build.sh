#!/usr/bin/env bash
# Build the vman test guest (kernel + initramfs) from Debian packages. See README.md.
#
#   tests/guest/build.sh [OUT_DIR]        (default: <repo>/target/vman-guest)
#
# Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.img and OUT_DIR/VERSION (written last; it records the
# inputs, so a second run with the same inputs only prints "up to date").
# Environment:
#   VMAN_GUEST_REBUILD=1       build even if up to date (also picks up a newer kernel package)
#   VMAN_GUEST_KERNEL_PKG=...  kernel (meta)package to use (default linux-image-cloud-amd64)
#   VMAN_GUEST_APT_ALLOW_REMOVE=1  let apt-get remove conflicting host packages when installing
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
out=${1:-$repo_root/target/vman-guest}

HOST_PKGS=(qemu-system-x86 qemu-utils busybox-static cpio)
KERNEL_PKG=${VMAN_GUEST_KERNEL_PKG:-linux-image-cloud-amd64}
# Wanted modules; their dependencies are added (from .modinfo), built-in ones are skipped.
MODULES=(virtio_pci virtio_blk virtio_net button evdev vfat nls_cp437 nls_ascii nls_utf8)

say() { echo "vman-guest: $*"; }
die() { echo "vman-guest: error: $*" >&2; exit 1; }

# --- host packages (dpkg-query only; apt-get update/install only if something is missing) -----
busybox_version=
missing=()
declare -A known=()
while read -r pkg status version; do
  known[$pkg]=1
  if [[ $status == ii ]]; then
    [[ $pkg == busybox-static ]] && busybox_version=$version
  else
    missing+=("$pkg")
  fi
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev} ${Version}\n' "${HOST_PKGS[@]}" 2>/dev/null || true)
for pkg in "${HOST_PKGS[@]}"; do # packages dpkg has never heard of are not listed at all
  [[ -n ${known[$pkg]:-} ]] || missing+=("$pkg")
done

SUDO=()
[[ $EUID -eq 0 ]] || SUDO=(sudo)
apt_updated=
apt_get() { # apt-get, waiting for locks held by other apt/dpkg processes
  local tries=0 log rc sudo=("${SUDO[@]}")
  [[ $1 != download ]] || sudo=() # needs no root; as root, skip apt's _apt sandbox (tmp is 0700)
  [[ $1 != download || $EUID -ne 0 ]] || set -- -o APT::Sandbox::User=root "$@"
  log=$(mktemp)
  while :; do
    rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -q -o DPkg::Lock::Timeout=600 "$@" 2>"$log" || rc=$?
    cat "$log" >&2
    if ((rc != 0)) && grep -q 'Could not get lock' "$log" && ((++tries < 120)); then
      say "apt lock busy, retrying in 5 s"; sleep 5; continue
    fi
    rm -f "$log"; return "$rc"
  done
}
apt_update() { [[ -n $apt_updated ]] || { say "apt-get update"; apt_get update; apt_updated=1; }; }

if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing ${missing[*]}"
  apt_update
  # --no-remove: never silently remove host packages. (Seen here: a backported qemu-utils 10
  # Breaks qemu-system-common 7.2, and a plain install replaced it.)
  no_remove=(--no-remove)
  [[ ${VMAN_GUEST_APT_ALLOW_REMOVE:-} == 1 ]] && no_remove=()
  apt_get install -y --no-install-recommends "${no_remove[@]}" "${missing[@]}" ||
    die "apt-get install ${missing[*]} failed; if apt wanted to remove a conflicting package," \
      "resolve that by hand or rerun with VMAN_GUEST_APT_ALLOW_REMOVE=1"
  busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
fi
[[ -n $busybox_version ]] || die "busybox-static is not installed"

# --- up-to-date check ---------------------------------------------------------------------------
inputs=$( { sha256sum "$script_dir/build.sh" "$script_dir/init" | cut -d' ' -f1
            echo "$KERNEL_PKG|$busybox_version|${MODULES[*]}"; } | sha256sum | cut -d' ' -f1)
mkdir -p "$out"
out=$(cd "$out" && pwd)

up_to_date() {
  [[ -s $out/vmlinuz && -s $out/initrd.img && -f $out/VERSION ]] || return 1
  [[ $(<"$out/VERSION") == *$'\n'"inputs=$inputs"* ]]
}
if [[ ${VMAN_GUEST_REBUILD:-} != 1 ]] && up_to_date; then
  stale=("$out"/.build.*) # left over by a killed run: remove unless a build is running right now
  if [[ -e ${stale[0]} ]] && exec 9>"$out/.lock" && flock -n 9; then rm -rf "${stale[@]}"; fi
  say "up to date ($out)"; exit 0
fi

# Only one build at a time per output dir (tests may start several setups at once).
exec 9>"$out/.lock"
flock 9
if [[ ${VMAN_GUEST_REBUILD:-} != 1 ]] && up_to_date; then
  say "up to date ($out, built by another process)"; exit 0
fi

rm -rf "$out"/.build.* # left over by a killed run
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS

# --- kernel package: resolve the metapackage to the real one, download (cached), extract -------
resolve_kernel() {
  local show dep
  show=$(apt-cache show --no-all-versions "$KERNEL_PKG" 2>/dev/null) || return 1
  if [[ $KERNEL_PKG == *-[0-9]*.*-* ]]; then # already a versioned package
    kpkg=$KERNEL_PKG
    kver=$(sed -n 's/^Version: //p' <<<"$show" | head -1)
  else
    dep=$(sed -n 's/^Depends: //p' <<<"$show" | tr ',' '\n' | grep -o 'linux-image-[^ ]*' | head -1)
    [[ -n $dep ]] || return 1
    kpkg=$dep
    kver=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
  fi
  [[ -n $kver ]]
}
resolve_kernel || { apt_update; resolve_kernel; } || die "cannot resolve $KERNEL_PKG with apt-cache"

cache=$out/.cache
mkdir -p "$cache"
deb=$(find "$cache" -maxdepth 1 -name "${kpkg}_${kver//:/%3a}_*.deb" | head -1)
if [[ -z $deb ]]; then
  say "downloading $kpkg=$kver"
  mkdir "$tmp/dl"
  (cd "$tmp/dl" && apt_get download "$kpkg=$kver") \
    || { apt_update; (cd "$tmp/dl" && apt_get download "$kpkg=$kver"); } \
    || die "cannot download $kpkg=$kver"
  find "$cache" -maxdepth 1 -name '*.deb' -delete # keep only the kernel in use
  mv "$tmp"/dl/*.deb "$cache/"
  deb=$(find "$cache" -maxdepth 1 -name "${kpkg}_*.deb" | head -1)
fi
say "extracting ${deb##*/}"
dpkg-deb -x "$deb" "$tmp/kpkg"

vmlinuz=$(find "$tmp/kpkg/boot" -maxdepth 1 -name 'vmlinuz-*' | head -1)
[[ -n $vmlinuz ]] || die "no boot/vmlinuz-* in $deb"
krel=${vmlinuz##*/vmlinuz-}
moddir=
for d in "$tmp/kpkg/lib/modules/$krel" "$tmp/kpkg/usr/lib/modules/$krel"; do
  [[ -d $d/kernel ]] && moddir=$d
done
[[ -n $moddir ]] || die "no lib/modules/$krel in $deb"

# --- modules: dependency closure, in load order ------------------------------------------------
# The package ships no modules.dep (depmod runs at install time, and kmod may not be installed
# here), so dependencies come from each module's own .modinfo "depends=" string.
root=$tmp/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,root,etc/acpi/PWRF,lib/modules}
modname() { # modname PATH: sets $mn to the module name (no fork: there are thousands)
  mn=${1##*/}; mn=${mn%%.ko*}; mn=${mn//-/_}
}
declare -A mod_path=() builtin=() seen=()
while IFS= read -r -d '' f; do
  modname "$f"; mod_path[$mn]=$f
done < <(find "$moddir/kernel" -name '*.ko*' -print0)
if [[ -f $moddir/modules.builtin ]]; then
  while IFS= read -r m; do modname "$m"; builtin[$mn]=1; done <"$moddir/modules.builtin"
fi
order=()
visit() { # visit NAME: copy the module (uncompressed) into the initramfs after its dependencies
  local n=$1 src dst deps d
  [[ -z ${seen[$n]:-} ]] || return 0
  seen[$n]=1
  src=${mod_path[$n]:-}
  if [[ -z $src ]]; then
    [[ -n ${builtin[$n]:-} ]] && return 0
    die "module $n is neither in the kernel package nor built in ($krel)"
  fi
  dst=$root/lib/modules/$n.ko
  case $src in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *) die "unknown module format: $src" ;;
  esac
  deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -1)
  for d in ${deps//,/ }; do modname "$d"; visit "$mn"; done
  order+=("$n")
}
for m in "${MODULES[@]}"; do visit "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/vman-modules"

# --- initramfs ------------------------------------------------------------------------------
cp "$(dpkg -L busybox-static | grep -m1 '/bin/busybox$')" "$root/bin/busybox"
install -m 0755 "$script_dir/init" "$root/init"
# Fixed timestamps, owners and order: the same inputs give the same initrd.img bytes.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n >"$tmp/initrd.img"
cp "$vmlinuz" "$tmp/vmlinuz"

cat >"$tmp/VERSION" <<EOF
# vman test guest, written by tests/guest/build.sh (this file is written last)
kernel_package=$kpkg
kernel_package_version=$kver
kernel_release=$krel
busybox_static_version=$busybox_version
modules=${order[*]}
vmlinuz_sha256=$(sha256sum "$tmp/vmlinuz" | cut -d' ' -f1)
initrd_sha256=$(sha256sum "$tmp/initrd.img" | cut -d' ' -f1)
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
inputs=$inputs
EOF

# --- move into place: invalidate the stamp first, write it last --------------------------------
rm -f "$out/VERSION"
mv -f "$tmp/vmlinuz" "$out/vmlinuz"
mv -f "$tmp/initrd.img" "$out/initrd.img"
mv -f "$tmp/VERSION" "$out/VERSION"
say "built $out ($kpkg $kver, initrd $(stat -c %s "$out/initrd.img") bytes) in $((SECONDS - started)) s"
