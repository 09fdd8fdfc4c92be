#!/usr/bin/env bash
# Build the two tiny container images the tests and the example project use, from this host's
# own binaries: there is no image registry to pull from here, so each image is an honest rootfs
# of the host's redis-server / PostgreSQL 15 plus the shared libraries ldd lists, imported with
# `$ENGINE import` (no Dockerfile, no registry; the profiles use them with pull = "never").
#
# Usage: images/build.sh [--force]
#   without --force an image that exists already is kept (fast, idempotent); --force rebuilds.
# Env: ENGINE (default: podman if on PATH, else docker), TAG (default: 1).
# Ownership: files are root:root and /data of ul-postgres is 101:101 (the image's postgres user)
# by tar's --owner/--group on an archive written in two passes, so no chown, no root and no
# fakeroot are needed for the tar itself (importing needs whatever the engine needs).
set -euo pipefail
umask 022

die() { echo "images/build.sh: $*" >&2; exit 1; }

force=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (usage: images/build.sh [--force])" ;;
  esac
done

if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman
  elif command -v docker >/dev/null 2>&1; then ENGINE=docker
  else die "neither podman nor docker found: apt-get install podman (or set ENGINE)"
  fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || die "ENGINE=$ENGINE not found on PATH"
TAG=${TAG:-1}
for tool in ldd tar; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install $([ "$tool" = ldd ] && echo libc-bin || echo tar)"
done

PG=/usr/lib/postgresql/15
PG_SHARE=/usr/share/postgresql/15

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copy host file $1 (symlinks resolved) to the same path under rootfs $2 (or to $3 there).
put() {
  local dest=$2${3:-$1}
  mkdir -p "$(dirname "$dest")"
  cp -L --preserve=mode,timestamps "$1" "$dest"
}

# Copy every shared library (and the dynamic loader) that ldd lists for the files $2.. into
# rootfs $1, each at the path ldd gives. A library ldd cannot find is an error.
put_libs() {
  local root=$1 out missing lib
  shift
  out=$(for f in "$@"; do ldd "$f" 2>/dev/null || true; done)
  missing=$(grep 'not found' <<<"$out" | awk '{print $1}' | sort -u | tr '\n' ' ' || true)
  [ -z "$missing" ] || die "shared libraries not found on this host: $missing"
  while read -r lib; do
    put "$lib" "$root"
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out" | sort -u)
}

# Import rootfs $1 as image $2, with owner uid:gid $3 for the directory /data, and the
# config changes $4.. (each one --change instruction).
import_rootfs() {
  local root=$1 image=$2 data_owner=$3 old
  shift 3
  local changes=() c
  for c in "$@"; do changes+=(--change "$c"); done
  rm -f "$work/rootfs.tar"
  tar -C "$root" -cf "$work/rootfs.tar" --numeric-owner --owner=0 --group=0 --exclude=./data .
  tar -C "$root" -rf "$work/rootfs.tar" --numeric-owner \
    --owner="${data_owner%:*}" --group="${data_owner#*:}" --no-recursion ./data
  old=$("$ENGINE" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  if ! "$ENGINE" import "${changes[@]}" - "$image" <"$work/rootfs.tar" >/dev/null 2>"$work/import.log"; then
    cat "$work/import.log" >&2
    die "$ENGINE import of $image failed"
  fi
  # After --force, drop the image the tag left behind (kept if a container still uses it).
  if [ -n "$old" ] && [ "$old" != "$("$ENGINE" image inspect --format '{{.Id}}' "$image")" ]; then
    "$ENGINE" rmi "$old" >/dev/null 2>&1 || true
  fi
}

new_rootfs() {
  local root=$work/$1
  rm -rf "$root"
  mkdir -m 755 "$root"
  mkdir -p "$root/data"
  mkdir -m 1777 "$root/tmp"
  echo "$root"
}

build_redis() {
  local server cli root
  server=$(command -v redis-server) || die "redis-server not found: apt-get install redis-server"
  cli=$(command -v redis-cli) || die "redis-cli not found: apt-get install redis-tools"
  server=$(readlink -f "$server")
  cli=$(readlink -f "$cli")
  root=$(new_rootfs redis)
  put "$server" "$root" /usr/bin/redis-server
  put "$cli" "$root" /usr/bin/redis-cli
  put_libs "$root" "$server" "$cli"
  import_rootfs "$root" "$1" 0:0 \
    'CMD ["redis-server","--bind","0.0.0.0","--protected-mode","no","--save","","--appendonly","no"]'
}

build_postgres() {
  local root sh mkdir_bin
  if [ ! -x "$PG/bin/postgres" ] || [ ! -x "$PG/bin/initdb" ]; then
    die "PostgreSQL 15 not found in $PG: apt-get install postgresql-15"
  fi
  [ -d "$PG_SHARE" ] || die "$PG_SHARE not found (initdb needs it): apt-get install postgresql-15"
  [ -d /usr/share/zoneinfo ] || die "/usr/share/zoneinfo not found: apt-get install tzdata"
  sh=$(readlink -f /bin/sh || true)
  [ -x "$sh" ] || die "/bin/sh not found: apt-get install dash"
  mkdir_bin=$(readlink -f /bin/mkdir || true)
  [ -x "$mkdir_bin" ] || die "/bin/mkdir not found: apt-get install coreutils"
  root=$(new_rootfs postgres)

  mkdir -p "$root$PG" "$root/usr/share/postgresql"
  # The JIT provider is left out: its libLLVM alone is ~110 MB, and a llvmjit.so whose libLLVM
  # is missing makes the first JIT-eligible query of each backend fail ("could not load
  # library"), while without llvmjit.so PostgreSQL just runs without JIT.
  cp -a "$PG/bin" "$PG/lib" "$root$PG/"
  rm -rf "$root$PG/lib/llvmjit.so" "$root$PG/lib/llvmjit_types.bc" "$root$PG/lib/bitcode"
  cp -a "$PG_SHARE" "$root/usr/share/postgresql/"
  cp -a /usr/share/zoneinfo "$root/usr/share/"
  put "$sh" "$root" /bin/sh
  put "$mkdir_bin" "$root" /bin/mkdir
  local elves
  mapfile -t elves < <(find "$root$PG/bin" -type f; find "$root$PG/lib" -type f -name '*.so')
  put_libs "$root" "$sh" "$mkdir_bin" "${elves[@]}"

  mkdir -p "$root/etc" "$root/usr/local/bin"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'postgres:x:101:101:postgres:/data:/bin/sh' \
    >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'postgres:x:101:' >"$root/etc/group"
  cat >"$root/usr/local/bin/ul-postgres-start" <<'EOF'
#!/bin/sh
# As user postgres: initdb on first start (PGDATA, default /tmp/pg: mount a tmpfs on /tmp for
# a throwaway cluster), then postgres in the foreground, listening on every interface.
set -e
export PGDATA=${PGDATA:-/tmp/pg}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" -U postgres --auth=trust -N -E UTF8 --locale=C >/dev/null
  # Clients come through the engine's bridge, not loopback: trust them too (a test database,
  # as the official image's POSTGRES_HOST_AUTH_METHOD=trust).
  echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
fi
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp "$@"
EOF
  chmod 755 "$root/usr/local/bin/ul-postgres-start"
  import_rootfs "$root" "$1" 101:101 \
    'USER postgres' \
    "ENV PATH=$PG/bin:/usr/local/bin:/usr/bin:/bin" \
    'CMD ["/usr/local/bin/ul-postgres-start"]'
}

for name in redis postgres; do
  image=localhost/ul-$name:$TAG
  if [ "$force" = 0 ] && "$ENGINE" image inspect "$image" >/dev/null 2>&1; then
    echo "found $image"
    continue
  fi
  start=$SECONDS
  "build_$name" "$image"
  echo "built $image ($((SECONDS - start)) s, $("$ENGINE" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}'))"
done
