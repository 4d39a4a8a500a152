#!/usr/bin/env bash
# Regenerates the stock voice prompts in sip-config/prompts/ with espeak-ng and sox.
#
# Output format is what the RTP path plays without conversion: 8 kHz, mono, 16-bit PCM WAV.
# Speech is band-limited to the telephone band (300-3400 Hz) and normalised to -3 dBFS so
# all prompts play at a similar loudness. Re-run after changing any text below.
#
# Usage: scripts/make-prompts.sh [output-dir]   (default: sip-config/prompts next to scripts/)
set -euo pipefail

VOICE="${VOICE:-en-us}"
SPEED="${SPEED:-175}"   # words per minute
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-$repo_root/sip-config/prompts}"

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "make-prompts: $tool is required (apt install espeak-ng sox)" >&2
        exit 1
    }
done

mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# say NAME SPEED TEXT: speak TEXT at SPEED wpm into NAME.wav.
say() {
    local name="$1" speed="$2" text="$3"
    espeak-ng -v "$VOICE" -s "$speed" -w "$work/$name.raw.wav" -- "$text"
    # Trim leading silence and keep a short tail, telephone band, 8 kHz mono 16-bit.
    sox -R "$work/$name.raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$out_dir/$name.wav" \
        silence 1 0.02 0.1% reverse silence 1 0.02 0.1% reverse \
        highpass 300 lowpass 3400 gain -n -3 pad 0.1 0.3
    printf 'make-prompts: %-16s %5.2f s\n' "$name.wav" "$(soxi -D "$out_dir/$name.wav")"
}

say greeting 210 "Welcome to voxgate. Press 1 to be forwarded, 2 to stop recording, \
3 to record again, 5 to dial a number followed by hash, 9 to hang up."
say error "$SPEED" "Sorry, that forward did not work."
say menu "$SPEED" "Press 1 to forward, 5 to dial, or 9 to hang up."
say goodbye "$SPEED" "Goodbye."
say tts_fallback "$SPEED" "Sorry, text to speech is not available."

# Hold: 2 s of soft plucked arpeggio (C major): each note faded in/out and the mix low-passed
# so it is mellow rather than bright, quiet (-14 dBFS peak) under a waiting caller, and
# fading at the end so it loops without a click.
notes=(C4 E4 G4 E4)
parts=()
for i in "${!notes[@]}"; do
    sox -R -n -r 8000 -c 1 -b 16 "$work/note$i.wav" synth 0.5 pluck "${notes[$i]}" fade 0.01 0.5 0.08
    parts+=("$work/note$i.wav")
done
sox -R "${parts[@]}" -r 8000 -c 1 -b 16 -e signed-integer "$out_dir/hold.wav" \
    lowpass 1500 gain -n -14 fade t 0.02 2 0.3
printf 'make-prompts: %-16s %5.2f s\n' "hold.wav" "$(soxi -D "$out_dir/hold.wav")"
