#!/usr/bin/env bash
# Render a report page in headless Chromium and save a screenshot, to look at it as a reader would.
#
#   bash scripts/check_report_render.sh REPORT_HTML [OUT_PNG] [WIDTH,HEIGHT]
#
# Browser: $CHROMIUM, else chromium / chromium-browser / google-chrome on PATH, else Debian's
# chromium unpacked (no root, no install) into $CHROMIUM_HOME (default
# ~/.cache/lightning-unlearn/chromium) by `apt-get download` + `dpkg -x`, with the few shared
# libraries a Debian 12 machine lacks. Exits non-zero if the page does not render (blank shot).
set -euo pipefail
cd "$(dirname "$0")/.."
page="${1:?usage: check_report_render.sh REPORT_HTML [OUT_PNG] [WIDTH,HEIGHT]}"
shot="${2:-${page%.html}.png}"
window="${3:-1400,2400}"
[ -f "$page" ] || { echo "no such page: $page" >&2; exit 2; }
home="${CHROMIUM_HOME:-$HOME/.cache/lightning-unlearn/chromium}"
# chromium's own package and the libraries it links that a minimal Debian 12 image does not have.
packages=(chromium chromium-common libflac12 libxnvctrl0 libdouble-conversion3 libharfbuzz-subset0 libminizip1
          libopenh264-7 libopenjp2-7 libopus0 libpulse0 libasyncns0 libogg0 libsndfile1 libmp3lame0 libmpg123-0
          libvorbis0a libvorbisenc2)

browser="${CHROMIUM:-}"
if [ -z "$browser" ]; then
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then browser="$(command -v "$name")"; break; fi
  done
fi
if [ -z "$browser" ]; then
  browser="$home/root/usr/lib/chromium/chromium"
  if [ ! -x "$browser" ]; then
    echo "no Chromium found: unpacking Debian's into $home (apt-get download + dpkg -x, no root needed)"
    mkdir -p "$home/debs" "$home/root"
    (cd "$home/debs" && apt-get download "${packages[@]}" >/dev/null)
    for deb in "$home"/debs/*.deb; do dpkg -x "$deb" "$home/root"; done
  fi
  libs="$home/root/usr/lib/chromium:$home/root/usr/lib/x86_64-linux-gnu:$home/root/usr/lib/x86_64-linux-gnu/pulseaudio"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing="$(ldd "$browser" | grep 'not found' || true)"
  if [ -n "$missing" ]; then
    echo "the unpacked Chromium still lacks shared libraries (add their packages to this script):" >&2
    echo "$missing" >&2
    exit 2
  fi
fi

abs="$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions \
  --window-size="$window" --screenshot="$shot" "file://$abs" 2>/dev/null >/dev/null
[ -s "$shot" ] || { echo "Chromium wrote no screenshot" >&2; exit 1; }
python="${PYTHON:-.venv/bin/python}"
"$python" - "$shot" <<'EOF'
import sys
from PIL import Image

with Image.open(sys.argv[1]) as shot:
    colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    distinct = len(colours) if colours is not None else 1 << 20
    print(f"{sys.argv[1]}: {shot.size[0]}x{shot.size[1]} px, {distinct} distinct colours")
    if distinct < 50:
        sys.exit("the screenshot is (nearly) blank: the page did not render")
EOF
