#!/usr/bin/env bash
# Latency of calls over Twilio Media Streams, measured with streamdouble (an
# independent simulator of Twilio's side): each clinic question is asked in a
# fresh stream, and Izwi's per-turn `response_ms` (the caller's end of speech,
# on the clock of the caller's media frames, to the first reply media frame
# sent) is collected. Prints P50 and P95. Needs `make build models-test test-tools`.
# Usage: scripts/bench-twilio.sh [profile]   (default: small)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-small}
py=target/pytools/bin/python
work=$(mktemp -d)
trap 'kill $izwi 2>/dev/null || true; rm -rf "$work"' EXIT
port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IZWI_MODELS_PROFILE=$profile IZWI_SIP_ENABLED=false IZWI_HTTP_LISTEN=127.0.0.1:$port \
  IZWI_TWILIO_VALIDATE_SIGNATURE=false IZWI_RECORDS_PATH="$work/records.db" \
  target/release/izwi serve 2>"$work/izwi.log" &
izwi=$!
for _ in $(seq 1 120); do grep -q "Izwi is ready" "$work/izwi.log" && break; sleep 0.5; done
questions=(
  "What time does the clinic open on Monday?"
  "Do I need an appointment to see a nurse?"
  "How much does a consultation cost?"
  "Can I bring my child for a vaccination today?"
  "Where is the clinic located?"
  "Is the pharmacy open on Saturday?"
)
for i in "${!questions[@]}"; do
  espeak-ng -w "$work/q.wav" "${questions[$i]}"
  # 4 s for the greeting, the question, 8 s for the answer; 8 kHz mono as Twilio sends.
  $py - "$work/q.wav" "$work/call.wav" <<'PY'
import sys, wave, numpy as np
w = wave.open(sys.argv[1]); x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
t = np.arange(0, len(x) / w.getframerate(), 1 / 8000)
y = np.interp(t, np.arange(len(x)) / w.getframerate(), x).astype(np.int16)
y = np.concatenate([np.zeros(8000 * 4, np.int16), y, np.zeros(8000 * 8, np.int16)])
o = wave.open(sys.argv[2], "wb"); o.setnchannels(1); o.setsampwidth(2); o.setframerate(8000); o.writeframes(y.tobytes()); o.close()
PY
  target/pytools/bin/streamdouble call "ws://127.0.0.1:$port/twilio/stream" --audio "$work/call.wav" --quiet >/dev/null || true
done
sleep 1
grep '"turn"\| turn ' "$work/izwi.log" | grep -o 'greeting=false.*' | grep -o 'response_ms=[0-9]*' | cut -d= -f2 | sort -n > "$work/ms"
n=$(wc -l < "$work/ms")
[ "$n" -gt 0 ] || { echo "no answered turns; log: $work/izwi.log" >&2; cat "$work/izwi.log" >&2; exit 1; }
p50=$(awk -v n="$n" 'NR==int((n+1)/2)' "$work/ms")
p95=$(awk -v n="$n" 'NR==int(n*0.95+0.999)' "$work/ms")
echo "twilio media streams, profile $profile, $n answered turns: end of speech -> first reply media frame P50 ${p50} ms, P95 ${p95} ms (all: $(tr '\n' ' ' < "$work/ms"))"
