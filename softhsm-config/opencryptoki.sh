#!/usr/bin/env bash
# Make the openCryptoki software token (PKCS11_SW stdll) usable by tests and CI (idempotent).
#
#   softhsm-config/opencryptoki.sh [LABEL] [DIR]          set up / check the token
#   softhsm-config/opencryptoki.sh --probe [LABEL] [DIR]  same, then run the Python checks and
#                                                         rewrite softhsm-config/opencryptoki-mechanisms.txt
#
#   LABEL  token label, default "ock-soft" (max 32 bytes)
#   DIR    project-local folder for the PINs, default <repo>/var/opencryptoki
#          (DIR/so.pin, DIR/user.pin: random, 8 characters, mode 0600, never printed)
#
# Must run as root (CI does). Steps: install the Debian package "opencryptoki" if missing; make
# sure /etc/opencryptoki/opencryptoki.conf has a slot with the soft token (the Debian default
# has "slot 3 { stdll = libpkcs11_sw.so }"; a slot is appended only if none exists); create the
# lock/data directories (root:pkcs11, 0770; /run/lock is a tmpfs, so they vanish on reboot);
# start pkcsslotd directly (no systemd needed) unless it is running, restarting it if the config
# is newer than the daemon (pkcsslotd ignores SIGTERM while any openCryptoki application is
# attached; a daemon killed with SIGKILL leaves shared memory that the next one reclaims;
# without a running pkcsslotd, C_Initialize fails with CKR_HOST_MEMORY); initialise the token if
# it is not (C_InitToken with the default SO PIN 87654321, then C_SetPIN for the SO, C_InitPIN
# for the user - through ctypes so that no PIN appears on a command line or a tty); finally log
# in with DIR/user.pin to prove it works.
#
# openCryptoki 3.8.1 (Debian 12) has no environment variable for another config file or token
# directory: config, /var/lib/opencryptoki/swtok and the daemon are machine-wide. There is one
# soft token per machine, so one label at a time.
#
# Environment:
#   OCK_RESET=1   stop pkcsslotd, wipe the soft token (ALL its objects) and the PIN files,
#                 re-initialise with new PINs. Needed to change the label or when the PIN files
#                 do not match the token.
#   OCK_MODULE    PKCS#11 library (default: the one installed by the opencryptoki package)
#
# Output: progress on stderr; on success, stdout gets shell-style lines, also written to
# DIR/ock.env (no secrets in it):
#   OCK_MODULE=... OCK_SLOT=... OCK_LABEL=... OCK_USER_PIN_FILE=... OCK_SO_PIN_FILE=...
# Exit status non-zero, with an "ERROR:" line on stderr, when anything fails.
set -euo pipefail

me=opencryptoki.sh
die() { echo "$me: ERROR: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

probe=0
if [ "${1:-}" = "--probe" ]; then probe=1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
label=${1:-ock-soft}
dir=${2:-$(dirname "$here")/var/opencryptoki}
[ -n "$label" ] || die "empty label"
[ "$(printf %s "$label" | wc -c)" -le 32 ] || die "label '$label' is longer than 32 bytes"

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, edits /etc/opencryptoki, starts pkcsslotd)"

conf=/etc/opencryptoki/opencryptoki.conf
pidfile=/var/run/pkcsslotd.pid
socket=/var/run/pkcsslotd.socket
swdir=/var/lib/opencryptoki/swtok
default_so_pin=87654321   # openCryptoki's built-in SO PIN of a fresh token (user: 12345678)

# --- 1. package -----------------------------------------------------------------------------
if ! dpkg-query -W -f='${Status}' opencryptoki 2>/dev/null | grep -q 'ok installed' \
   || [ ! -x /usr/sbin/pkcsslotd ]; then
  log "installing opencryptoki (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq opencryptoki >&2 || die "apt-get install opencryptoki failed"
fi
command -v python3 >/dev/null || die "python3 is required"
ock_version=$(dpkg-query -W -f='${Version}' opencryptoki 2>/dev/null || echo unknown)

module=${OCK_MODULE:-}
if [ -z "$module" ]; then
  for m in $(dpkg -L opencryptoki libopencryptoki0 2>/dev/null | grep -E '/pkcs11/libopencryptoki\.so$') \
           /usr/lib/*/pkcs11/libopencryptoki.so /usr/lib/*/opencryptoki/libopencryptoki.so; do
    if [ -e "$m" ]; then module=$m; break; fi
  done
fi
[ -n "$module" ] && [ -e "$module" ] || die "cannot find libopencryptoki.so (set OCK_MODULE)"

# --- 2. group and directories ---------------------------------------------------------------
# The package's postinst does this; repeat it for images where it was skipped or /run was wiped.
getent group pkcs11 >/dev/null || groupadd --system pkcs11 || die "cannot create group pkcs11"
if ! id -nG root | tr ' ' '\n' | grep -qx pkcs11; then
  usermod -a -G pkcs11 root || die "cannot add root to group pkcs11"
fi
for d in /var/lib/opencryptoki "$swdir" "$swdir/TOK_OBJ" \
         /var/lock/opencryptoki /var/lock/opencryptoki/swtok /var/log/opencryptoki; do
  install -d -m 0770 -o root -g pkcs11 "$d" || die "cannot create $d"
done

# --- 3. slot configuration ------------------------------------------------------------------
# Print the number of the first slot whose stdll is the soft token.
sw_slot() {
  [ -f "$conf" ] || return 0
  sed 's/#.*//' "$conf" | awk '
    /^[ \t]*slot[ \t]+[0-9]+/ { n = $2; next }
    /stdll[ \t]*=/ { v = $0; sub(/.*=[ \t]*/, "", v); gsub(/[ \t"]/, "", v)
                     if (v ~ /^(libpkcs11_sw\.so|PKCS11_SW\.so)/ && n != "") { print n; exit } }'
}
conf_changed=0
slot=$(sw_slot)
if [ -z "$slot" ]; then
  if [ -f "$conf" ]; then
    cp -p "$conf" "$conf.hsmpool.bak"
    slot=$(sed 's/#.*//' "$conf" | awk '/^[ \t]*slot[ \t]+[0-9]+/ { if ($2 + 1 > m) m = $2 + 1 } END { print m + 0 }')
  else
    install -d -m 0755 "$(dirname "$conf")"
    echo "version opencryptoki-3.1" > "$conf"
    slot=3
  fi
  printf '\nslot %s\n{\nstdll = libpkcs11_sw.so\n}\n' "$slot" >> "$conf"
  log "added slot $slot (libpkcs11_sw.so) to $conf"
  conf_changed=1
fi

# --- 4. pkcsslotd ---------------------------------------------------------------------------
# A pid is "alive" if /proc/PID exists, is pkcsslotd and is not a zombie: in containers whose
# PID 1 does not reap orphans, a stopped daemon lingers as <defunct> with its comm intact.
alive() {
  local st
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = pkcsslotd ] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
daemon_pid() {   # pid of a running pkcsslotd, or nothing
  local p c
  if [ -s "$pidfile" ]; then
    p=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$p" ] && alive "$p"; then echo "$p"; return 0; fi
  fi
  for c in /proc/[0-9]*; do
    p=${c#/proc/}
    if alive "$p"; then echo "$p"; return 0; fi
  done
  return 0
}
stop_daemon() {
  local p i
  p=$(daemon_pid)
  [ -n "$p" ] || return 0
  log "stopping pkcsslotd (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 50); do alive "$p" || return 0; sleep 0.1; done
  # pkcsslotd ignores SIGTERM/SIGINT/SIGHUP while any PKCS#11 application is registered with it.
  die "pkcsslotd (pid $p) ignores SIGTERM while openCryptoki applications are running; stop them first (or kill -9 it and accept that their sessions break)"
}
start_daemon() {
  local i p
  # A pkcsslotd killed with SIGKILL leaves its pid file and socket behind.
  rm -f "$pidfile" "$socket"
  log "starting pkcsslotd"
  local out rc=0
  out=$(/usr/sbin/pkcsslotd 2>&1) || rc=$?
  if [ "$rc" != 0 ]; then
    printf '%s\n' "$out" >&2
    die "pkcsslotd failed to start (exit $rc)"
  fi
  # After a SIGKILL its SysV shared memory segment stays; the new daemon says "ERROR ... Shared
  # memory creation failed (0x11)" + "Reclaiming 0x..." on stderr and then works. Not an error.
  if printf '%s' "$out" | grep -q Reclaiming; then
    log "pkcsslotd reclaimed the shared memory left by a killed daemon"
  elif [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
  fi
  for i in $(seq 100); do
    p=$(daemon_pid)
    if [ -n "$p" ] && [ -S "$socket" ]; then log "pkcsslotd running (pid $p)"; return 0; fi
    sleep 0.1
  done
  die "pkcsslotd did not come up (no process or no $socket); stale shared memory? try 'ipcs -m'"
}

if [ "${OCK_RESET:-0}" = 1 ]; then
  log "OCK_RESET=1: wiping the soft token in $swdir and the PIN files in $dir"
  stop_daemon
  rm -f "$swdir/NVTOK.DAT" "$swdir/MK_SO" "$swdir/MK_USER" "$swdir"/TOK_OBJ/* \
        /dev/shm/var.lib.opencryptoki.swtok "$dir/so.pin" "$dir/user.pin"
  conf_changed=1
fi
started_at() {   # epoch seconds at which process $1 started
  local ticks btime
  ticks=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f20)
  btime=$(awk '/^btime/ { print $2 }' /proc/stat)
  echo $((btime + ticks / $(getconf CLK_TCK)))
}
p=$(daemon_pid)
if [ -n "$p" ] && [ "$conf_changed" = 0 ] && [ "$(stat -c %Y "$conf")" -gt "$(started_at "$p")" ]; then
  log "$conf is newer than the running pkcsslotd: restarting it"
  conf_changed=1
fi
if [ -n "$p" ] && [ "$conf_changed" = 1 ]; then stop_daemon; fi
if [ -z "$(daemon_pid)" ]; then start_daemon; fi

# --- 5. PIN folder --------------------------------------------------------------------------
mkdir -p "$dir" || die "cannot create $dir"
dir=$(cd "$dir" && pwd)
chmod 700 "$dir"
umask 077

# --- 6. initialise / check the token (ctypes: PINs stay off argv and ttys) ------------------
OCK_MODULE=$module OCK_SLOT=$slot OCK_LABEL=$label OCK_DIR=$dir OCK_DEFAULT_SO_PIN=$default_so_pin \
python3 - <<'PY' || exit 1   # it printed an ERROR line
import ctypes as C, os, secrets, string, sys

UL = C.c_ulong
CKF_USER_PIN_INITIALIZED, CKF_TOKEN_INITIALIZED = 0x8, 0x400
CKF_USER_PIN_LOCKED, CKF_SO_PIN_LOCKED, CKF_SO_PIN_TO_BE_CHANGED = 0x40000, 0x400000, 0x800000
CKU_SO, CKU_USER = 0, 1
CKR = {0x0: "CKR_OK", 0x2: "CKR_HOST_MEMORY (what 3.8.1 returns when pkcsslotd is not running)",
       0x3: "CKR_SLOT_ID_INVALID", 0x5: "CKR_GENERAL_ERROR", 0x6: "CKR_FUNCTION_FAILED",
       0x30: "CKR_DEVICE_ERROR", 0xA0: "CKR_PIN_INCORRECT", 0xA1: "CKR_PIN_INVALID",
       0xA2: "CKR_PIN_LEN_RANGE", 0xA4: "CKR_PIN_LOCKED", 0xB3: "CKR_SESSION_HANDLE_INVALID",
       0xB8: "CKR_SESSION_READ_WRITE_SO_EXISTS", 0xE0: "CKR_TOKEN_NOT_PRESENT",
       0x100: "CKR_USER_ALREADY_LOGGED_IN", 0x102: "CKR_USER_PIN_NOT_INITIALIZED",
       0x190: "CKR_CRYPTOKI_NOT_INITIALIZED"}

class TokenInfo(C.Structure):
    _fields_ = [("label", C.c_char * 32), ("manufacturerID", C.c_char * 32), ("model", C.c_char * 16),
                ("serialNumber", C.c_char * 16), ("flags", UL)] + \
               [(n, UL) for n in ("maxSessionCount", "sessionCount", "maxRwSessionCount", "rwSessionCount",
                                  "maxPinLen", "minPinLen", "totalPublicMemory", "freePublicMemory",
                                  "totalPrivateMemory", "freePrivateMemory")] + \
               [("hardwareVersion", C.c_ubyte * 2), ("firmwareVersion", C.c_ubyte * 2), ("utcTime", C.c_char * 16)]

class Fail(Exception):
    pass

def ck(rv, what):
    if rv != 0:
        raise Fail(f"{what} returned {CKR.get(rv, 'CKR_?')} (0x{rv:X})")

module, slot, label, d = os.environ["OCK_MODULE"], int(os.environ["OCK_SLOT"]), os.environ["OCK_LABEL"], os.environ["OCK_DIR"]
default_so = os.environ["OCK_DEFAULT_SO_PIN"].encode()
so_file, user_file = os.path.join(d, "so.pin"), os.path.join(d, "user.pin")
lib = C.CDLL(module)
for fn in ("C_Initialize", "C_Finalize", "C_GetTokenInfo", "C_InitToken", "C_OpenSession", "C_CloseSession",
           "C_Login", "C_Logout", "C_SetPIN", "C_InitPIN"):
    getattr(lib, fn).restype = UL

def token_info():
    ti = TokenInfo()
    ck(lib.C_GetTokenInfo(UL(slot), C.byref(ti)), f"C_GetTokenInfo(slot {slot})")
    return ti

def read_pin(path):
    try:
        with open(path, "rb") as f:
            p = f.read().strip()
    except FileNotFoundError:
        return None
    return p or None

def write_pin(path, pin):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pin + b"\n")
    os.chmod(path, 0o600)

def new_pin(n):
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n)).encode()

def P(pin):
    return C.c_char_p(pin), UL(len(pin))

def session():
    h = UL()
    ck(lib.C_OpenSession(UL(slot), UL(0x6), None, None, C.byref(h)), "C_OpenSession(RW)")  # RW|SERIAL
    return h

def main():
    ck(lib.C_Initialize(None), "C_Initialize")
    try:
        ti = token_info()
    except Fail as e:
        raise Fail(f"{e}: no token in slot {slot}; is pkcsslotd running with this config?")
    model = ti.model.decode(errors="replace").strip()
    if "SoftTok" not in model:
        print(f"opencryptoki.sh: warning: slot {slot} token model is '{model}', expected 'IBM SoftTok'", file=sys.stderr)
    lo, hi = ti.minPinLen, ti.maxPinLen
    flags = ti.flags
    if flags & CKF_SO_PIN_LOCKED or flags & CKF_USER_PIN_LOCKED:
        raise Fail(f"a PIN of the token in slot {slot} is locked (flags 0x{flags:X}); rerun with OCK_RESET=1")
    cur_label = ti.label.decode(errors="replace").rstrip()

    if not flags & CKF_TOKEN_INITIALIZED or not flags & CKF_USER_PIN_INITIALIZED or flags & CKF_SO_PIN_TO_BE_CHANGED:
        if flags & CKF_TOKEN_INITIALIZED and cur_label != label:
            raise Fail(f"slot {slot} holds a half-initialised token labelled '{cur_label}'; rerun with OCK_RESET=1")
        # PINs: reuse files from an interrupted run, else new random ones (length = token maximum, 8).
        so_pin, user_pin = read_pin(so_file), read_pin(user_file)
        n = min(max(8, lo), hi)
        if so_pin is None or not lo <= len(so_pin) <= hi:
            so_pin = new_pin(n)
            write_pin(so_file, so_pin)
        if user_pin is None or not lo <= len(user_pin) <= hi:
            user_pin = new_pin(n)
            write_pin(user_file, user_pin)
        if not flags & CKF_TOKEN_INITIALIZED:
            print(f"opencryptoki.sh: initialising token in slot {slot} as '{label}'", file=sys.stderr)
            ck(lib.C_InitToken(UL(slot), *P(default_so), C.c_char_p(label.encode().ljust(32))),
               "C_InitToken (default SO PIN)")
        else:
            print(f"opencryptoki.sh: completing the interrupted initialisation of '{label}' in slot {slot}",
                  file=sys.stderr)
        h = session()
        try:
            if token_info().flags & CKF_SO_PIN_TO_BE_CHANGED:
                ck(lib.C_Login(h, UL(CKU_SO), *P(default_so)), "C_Login(SO, default PIN)")
                ck(lib.C_SetPIN(h, *P(default_so), *P(so_pin)), "C_SetPIN(SO)")
            else:
                ck(lib.C_Login(h, UL(CKU_SO), *P(so_pin)), "C_Login(SO, so.pin)")
            ck(lib.C_InitPIN(h, *P(user_pin)), "C_InitPIN(user)")
            ck(lib.C_Logout(h), "C_Logout(SO)")
        finally:
            lib.C_CloseSession(h)
        ti = token_info()
        cur_label = ti.label.decode(errors="replace").rstrip()
    elif cur_label != label:
        raise Fail(f"the soft token in slot {slot} is already initialised with label '{cur_label}', not '{label}'. "
                   f"Pass '{cur_label}' as LABEL, or rerun with OCK_RESET=1 to wipe it (destroys its keys)")

    user_pin = read_pin(user_file)
    if user_pin is None:
        raise Fail(f"token '{cur_label}' is initialised but {user_file} is missing (token set up from another folder?). "
                   f"Use that folder as DIR, or rerun with OCK_RESET=1 to wipe the token and make new PINs")
    h = session()
    try:
        rv = lib.C_Login(h, UL(CKU_USER), *P(user_pin))
        if rv == 0xA0:
            raise Fail(f"{user_file} does not match token '{cur_label}' (CKR_PIN_INCORRECT; repeated failures lock "
                       f"the PIN). Rerun with OCK_RESET=1 to wipe the token and make new PINs")
        if rv != 0x100:  # CKR_USER_ALREADY_LOGGED_IN is fine
            ck(rv, "C_Login(user)")
            lib.C_Logout(h)
    finally:
        lib.C_CloseSession(h)
    lib.C_Finalize(None)

try:
    main()
except Fail as e:
    print(f"opencryptoki.sh: ERROR: {e}", file=sys.stderr)
    sys.exit(1)
PY

# --- 7. report --------------------------------------------------------------------------------
env_lines="OCK_MODULE=$module
OCK_SLOT=$slot
OCK_LABEL=$label
OCK_USER_PIN_FILE=$dir/user.pin
OCK_SO_PIN_FILE=$dir/so.pin"
printf '%s\n' "$env_lines" > "$dir/ock.env"
log "ready: openCryptoki $ock_version soft token '$label' in slot $slot, pkcsslotd pid $(daemon_pid)"
log "user PIN file: $dir/user.pin (SO PIN: $dir/so.pin); settings also in $dir/ock.env"
printf '%s\n' "$env_lines"

# --- 8. optional probe ----------------------------------------------------------------------
[ "$probe" = 1 ] || exit 0
python3 -c 'import pkcs11' 2>/dev/null || die "--probe needs python-pkcs11 in python3 (pip install python-pkcs11)"
OCK_MODULE=$module OCK_SLOT=$slot OCK_LABEL=$label OCK_USER_PIN_FILE=$dir/user.pin \
OCK_VERSION=$ock_version OCK_OUT=$here/opencryptoki-mechanisms.txt \
python3 - <<'PY' || die "probe failed (see above)"
import ctypes as C, datetime, hashlib, hmac, os, platform, subprocess, sys, threading, time

module, slot, label = os.environ["OCK_MODULE"], int(os.environ["OCK_SLOT"]), os.environ["OCK_LABEL"]
with open(os.environ["OCK_USER_PIN_FILE"]) as f:
    PIN = f.read().strip()
out_path = os.environ["OCK_OUT"]
UL = C.c_ulong

CKR = {0x0: "CKR_OK", 0x5: "CKR_GENERAL_ERROR", 0x6: "CKR_FUNCTION_FAILED", 0xA: "CKR_CANT_LOCK",
       0x7: "CKR_ARGUMENTS_BAD", 0x12: "CKR_ATTRIBUTE_TYPE_INVALID", 0x13: "CKR_ATTRIBUTE_VALUE_INVALID",
       0x54: "CKR_FUNCTION_NOT_SUPPORTED", 0x60: "CKR_KEY_HANDLE_INVALID", 0x62: "CKR_KEY_SIZE_RANGE",
       0x63: "CKR_KEY_TYPE_INCONSISTENT", 0x68: "CKR_KEY_FUNCTION_NOT_PERMITTED", 0x69: "CKR_KEY_NOT_WRAPPABLE",
       0x70: "CKR_MECHANISM_INVALID", 0x71: "CKR_MECHANISM_PARAM_INVALID", 0x130: "CKR_DOMAIN_PARAMS_INVALID",
       0xD0: "CKR_TEMPLATE_INCOMPLETE", 0xD1: "CKR_TEMPLATE_INCONSISTENT", 0x110: "CKR_WRAPPING_KEY_HANDLE_INVALID",
       0x113: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT", 0x150: "CKR_BUFFER_TOO_SMALL", 0x101: "CKR_USER_NOT_LOGGED_IN",
       0x100: "CKR_USER_ALREADY_LOGGED_IN", 0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED"}
def ckr(rv):
    return f"{CKR.get(rv, 'CKR_?')} (0x{rv:X})"

lines = []
def out(s=""):
    lines.append(s)

# ---------------------------------------------------------------------------------------------
# Part A: raw ctypes - exact CKR codes for mechanisms the pool might want, and C_Initialize/locking
# ---------------------------------------------------------------------------------------------
lib = C.CDLL(module)
def f(name):
    fn = getattr(lib, name)
    fn.restype = UL
    return fn

class InitArgs(C.Structure):
    _fields_ = [("CreateMutex", C.c_void_p), ("DestroyMutex", C.c_void_p), ("LockMutex", C.c_void_p),
                ("UnlockMutex", C.c_void_p), ("flags", UL), ("pReserved", C.c_void_p)]
MUTEXFN = C.CFUNCTYPE(UL, C.c_void_p)
_dummy = MUTEXFN(lambda p: 0)
_dummy_p = C.cast(_dummy, C.c_void_p).value

def init_variant(args):
    if args is None:
        return f("C_Initialize")(None)
    fns, os_ok = args
    a = InitArgs()
    if fns:
        a.CreateMutex = a.DestroyMutex = a.LockMutex = a.UnlockMutex = _dummy_p
    if os_ok:
        a.flags = 0x2   # CKF_OS_LOCKING_OK
    return f("C_Initialize")(C.byref(a))

locking = []
for kind, args in (("pInitArgs = NULL (python-pkcs11 does this)", None),
                   ("flags=0, no mutex functions", (False, False)),
                   ("flags=CKF_OS_LOCKING_OK", (False, True)),
                   ("app mutex functions, flags=0", (True, False)),
                   ("app mutex functions + CKF_OS_LOCKING_OK", (True, True))):
    rv = init_variant(args)
    locking.append((kind, rv))
    if rv == 0:
        f("C_Finalize")(None)

class Attr(C.Structure):
    _fields_ = [("type", UL), ("pValue", C.c_void_p), ("ulValueLen", UL)]
class Mech(C.Structure):
    _fields_ = [("mechanism", UL), ("pParameter", C.c_void_p), ("ulParameterLen", UL)]
class MechInfo(C.Structure):
    _fields_ = [("ulMinKeySize", UL), ("ulMaxKeySize", UL), ("flags", UL)]
class GcmParams(C.Structure):
    _fields_ = [("pIv", C.c_void_p), ("ulIvLen", UL), ("ulIvBits", UL), ("pAAD", C.c_void_p),
                ("ulAADLen", UL), ("ulTagBits", UL)]
class CtrParams(C.Structure):
    _fields_ = [("ulCounterBits", UL), ("cb", C.c_ubyte * 16)]

_keep = []
def template(pairs):
    arr = (Attr * len(pairs))()
    for i, (t, v) in enumerate(pairs):
        if isinstance(v, bool):
            buf = C.c_ubyte(1 if v else 0); n = 1
        elif isinstance(v, int):
            buf = UL(v); n = C.sizeof(UL)
        else:
            buf = C.create_string_buffer(v, len(v)); n = len(v)
        _keep.append(buf)
        arr[i].type, arr[i].pValue, arr[i].ulValueLen = t, C.cast(C.pointer(buf), C.c_void_p), n
    return arr, UL(len(pairs))

def mech(m, param=None):
    mm = Mech(m, None, 0)
    if param is not None:
        _keep.append(param)
        mm.pParameter, mm.ulParameterLen = C.cast(C.pointer(param), C.c_void_p), C.sizeof(param)
    return mm

CKA_CLASS, CKA_TOKEN, CKA_KEY_TYPE, CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY = \
    0x0, 0x1, 0x100, 0x104, 0x105, 0x106, 0x107, 0x108, 0x10A
CKA_EXTRACTABLE, CKA_SENSITIVE, CKA_VALUE_LEN, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS = \
    0x162, 0x103, 0x161, 0x121, 0x122, 0x180

raw = {}   # name -> (GetMechanismInfo rv, operation, operation rv)
rc = f("C_Initialize")(None)
assert rc == 0, ckr(rc)
h = UL()
assert f("C_OpenSession")(UL(slot), UL(6), None, None, C.byref(h)) == 0
rc = f("C_Login")(h, UL(1), PIN.encode(), UL(len(PIN)))
assert rc in (0, 0x100), ckr(rc)

aes = UL()
t, n = template([(CKA_VALUE_LEN, 32), (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_WRAP, True),
                 (CKA_UNWRAP, True), (CKA_SIGN, True), (CKA_VERIFY, True), (CKA_EXTRACTABLE, True),
                 (CKA_SENSITIVE, False)])
rc = f("C_GenerateKey")(h, C.byref(mech(0x1080)), t, n, C.byref(aes)); assert rc == 0, ckr(rc)
aes2 = UL()
rc = f("C_GenerateKey")(h, C.byref(mech(0x1080)), t, n, C.byref(aes2)); assert rc == 0, ckr(rc)
rsa_pub, rsa_priv = UL(), UL()
pt, pn = template([(CKA_MODULUS_BITS, 2048), (CKA_PUBLIC_EXPONENT, b"\x01\x00\x01"), (CKA_VERIFY, True), (CKA_ENCRYPT, True), (CKA_WRAP, True)])
st, sn = template([(CKA_SIGN, True), (CKA_DECRYPT, True), (CKA_UNWRAP, True)])
rc = f("C_GenerateKeyPair")(h, C.byref(mech(0x0)), pt, pn, st, sn, C.byref(rsa_pub), C.byref(rsa_priv)); assert rc == 0, ckr(rc)

def mech_info(m):
    mi = MechInfo()
    return f("C_GetMechanismInfo")(UL(slot), UL(m), C.byref(mi))

def enc_init(m, param=None):
    rv = f("C_EncryptInit")(h, C.byref(mech(m, param)), aes)
    if rv == 0:  # finish the operation so the session is free again
        buf = C.create_string_buffer(64); ln = UL(64)
        f("C_Encrypt")(h, b"0123456789abcdef", UL(16), buf, C.byref(ln))
    return rv

def sign_init(m, key):
    rv = f("C_SignInit")(h, C.byref(mech(m)), key)
    if rv == 0:
        buf = C.create_string_buffer(512); ln = UL(512)
        f("C_Sign")(h, b"x" * 32, UL(32), buf, C.byref(ln))
    return rv

def wrap(m, param=None):
    ln = UL(0)
    return f("C_WrapKey")(h, C.byref(mech(m, param)), aes, aes2, None, C.byref(ln))

def ec_keygen(m=0x1040):
    pub, priv = UL(), UL()
    p256 = bytes.fromhex("06082a8648ce3d030107")
    et, en = template([(CKA_EC_PARAMS, p256), (CKA_VERIFY, True)])
    es, esn = template([(CKA_SIGN, True)])
    return f("C_GenerateKeyPair")(h, C.byref(mech(m)), et, en, es, esn, C.byref(pub), C.byref(priv))

iv12 = (C.c_ubyte * 12)()
gcm = GcmParams(C.cast(iv12, C.c_void_p), 12, 96, None, 0, 128)
ctr = CtrParams(128)
iv16 = (C.c_ubyte * 16)()
tests = [
    ("CKM_AES_GCM", 0x1087, "C_EncryptInit(AES-256 key, 12-byte IV, 128-bit tag)", lambda: enc_init(0x1087, gcm)),
    ("CKM_AES_CTR", 0x1086, "C_EncryptInit(AES-256 key, 128-bit counter)", lambda: enc_init(0x1086, ctr)),
    ("CKM_AES_CTS", 0x1089, "C_EncryptInit(AES-256 key)", lambda: enc_init(0x1089, iv16)),
    ("CKM_AES_OFB", 0x2104, "C_EncryptInit(AES-256 key)", lambda: enc_init(0x2104, iv16)),
    ("CKM_AES_CFB128", 0x2107, "C_EncryptInit(AES-256 key)", lambda: enc_init(0x2107, iv16)),
    ("CKM_AES_KEY_WRAP", 0x2109, "C_WrapKey(AES key by AES key)", lambda: wrap(0x2109)),
    ("CKM_AES_KEY_WRAP_PAD", 0x210A, "C_WrapKey(AES key by AES key)", lambda: wrap(0x210A)),
    ("CKM_AES_MAC", 0x1083, "C_SignInit(AES-256 key)", lambda: sign_init(0x1083, aes)),
    ("CKM_AES_CMAC", 0x108A, "C_SignInit(AES-256 key)", lambda: sign_init(0x108A, aes)),
    ("CKM_EC_KEY_PAIR_GEN", 0x1040, "C_GenerateKeyPair(P-256)", lambda: ec_keygen()),
    ("CKM_ECDSA", 0x1041, "C_SignInit(RSA key; mechanism checked first)", lambda: sign_init(0x1041, rsa_priv)),
    ("CKM_SHA256_RSA_PKCS", 0x40, "C_SignInit(RSA-2048 private key)", lambda: sign_init(0x40, rsa_priv)),
    ("CKM_SHA384_RSA_PKCS", 0x41, "C_SignInit(RSA-2048 private key)", lambda: sign_init(0x41, rsa_priv)),
    ("CKM_SHA512_RSA_PKCS", 0x42, "C_SignInit(RSA-2048 private key)", lambda: sign_init(0x42, rsa_priv)),
    ("CKM_SHA256_RSA_PKCS_PSS", 0x43, "(control) C_GetMechanismInfo only", None),
    ("CKM_SHA224", 0x255, "C_DigestInit", lambda: f("C_DigestInit")(h, C.byref(mech(0x255)))),
]
for name, m, what, fn in tests:
    raw[name] = (m, mech_info(m), what, fn() if fn else None)

f("C_Logout")(h)
f("C_CloseSession")(h)
f("C_Finalize")(None)

# ---------------------------------------------------------------------------------------------
# Part B: python-pkcs11 (what the project uses)
# ---------------------------------------------------------------------------------------------
import pkcs11
from pkcs11 import Attribute as A, KeyType, Mechanism as M, MechanismFlag as MF, ObjectClass
try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    have_crypto = True
except ImportError:
    have_crypto = False

p11 = pkcs11.lib(module)
tok = p11.get_token(token_label=label)
mechs = sorted(tok.slot.get_mechanisms(), key=int)
tok_lib_version = "%d.%d" % tuple(p11.library_version)
tok_cryptoki = "%d.%d" % tuple(p11.cryptoki_version)
tok_manuf, tok_desc = p11.manufacturer_id, p11.library_description
from importlib import metadata
pkcs11_version = metadata.version("python-pkcs11")
mech_infos = {int(m): tok.slot.get_mechanism_info(m) for m in mechs}

checks = []
def check(name, fn, expect="OK"):
    try:
        detail = fn() or ""
        status = "OK"
    except Exception as e:  # record and go on
        status, detail = "FAIL", f"{type(e).__name__} {e}".strip()
    checks.append((status, expect, name, detail))

SHA256_DIGESTINFO = bytes.fromhex("3031300d060960864801650304020105000420")

with tok.open(user_pin=PIN, rw=True) as s:
    for o in list(s.get_objects({A.TOKEN: True})):   # leftovers of an interrupted probe
        if str(o[A.LABEL]).startswith("probe-"):
            o.destroy()
    data = b"hsmpool openCryptoki probe " * 3

    def aes_cbc_pad():
        k = s.generate_key(KeyType.AES, 256, label="probe-aes")
        iv = s.generate_random(128)
        ct = k.encrypt(data, mechanism=M.AES_CBC_PAD, mechanism_param=iv)
        assert k.decrypt(ct, mechanism=M.AES_CBC_PAD, mechanism_param=iv) == data
        return f"generate_key(AES, 256) + encrypt/decrypt {len(data)} bytes -> {len(ct)} bytes ciphertext"
    check("AES-256 keygen + CKM_AES_CBC_PAD round trip", aes_cbc_pad)

    def aes_kat():
        if not have_crypto:
            return "skipped: cryptography not installed"
        kv, iv = bytes(range(32)), bytes(range(16))
        k = s.create_object({A.CLASS: ObjectClass.SECRET_KEY, A.KEY_TYPE: KeyType.AES, A.VALUE: kv,
                             A.ENCRYPT: True, A.DECRYPT: True, A.TOKEN: False})
        ct = k.encrypt(data, mechanism=M.AES_CBC_PAD, mechanism_param=iv)
        from cryptography.hazmat.primitives import padding as sympad
        pd = sympad.PKCS7(128).padder(); padded = pd.update(data) + pd.finalize()
        e = Cipher(algorithms.AES(kv), modes.CBC(iv)).encryptor()
        assert ct == e.update(padded) + e.finalize()
        return "imported key; ciphertext equals pyca/cryptography AES-256-CBC + PKCS#7"
    check("AES-CBC-PAD known answer vs pyca/cryptography", aes_kat)

    def token_object():
        k = s.generate_key(KeyType.AES, 256, label="probe-persistent", store=True)
        with tok.open(rw=True) as s2:   # no PIN: this process is already logged in (see note)
            found = list(s2.get_objects({A.LABEL: "probe-persistent", A.CLASS: ObjectClass.SECRET_KEY}))
            assert len(found) >= 1, "not found from a second session"
            for o in found:
                o.destroy()
        return "stored under /var/lib/opencryptoki/swtok/TOK_OBJ, found from a 2nd session, destroyed"
    check("AES-256 token object (CKA_TOKEN=true) create/find/destroy", token_object)

    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="probe-rsa")

    def rsa_sha256_pkcs():
        sig = priv.sign(data, mechanism=M.SHA256_RSA_PKCS)
        return f"{len(sig)}-byte signature"
    check("RSA-2048 CKM_SHA256_RSA_PKCS sign", rsa_sha256_pkcs, expect="FAIL")

    def rsa_pkcs_digestinfo():
        di = SHA256_DIGESTINFO + hashlib.sha256(data).digest()
        sig = priv.sign(di, mechanism=M.RSA_PKCS)
        assert pub.verify(di, sig, mechanism=M.RSA_PKCS)
        extra = ""
        if have_crypto:
            n = int.from_bytes(pub[A.MODULUS], "big"); e = int.from_bytes(pub[A.PUBLIC_EXPONENT], "big")
            rsa.RSAPublicNumbers(e, n).public_key().verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            extra = "; verified by pyca/cryptography as RSASSA-PKCS1-v1_5/SHA-256"
        return "CKM_RSA_PKCS over DigestInfo(SHA-256) hashed on the host" + extra
    check("RSA-2048 PKCS#1 v1.5 SHA-256 signature (workaround)", rsa_pkcs_digestinfo)

    def rsa_pss():
        param = (M.SHA256, pkcs11.MGF.SHA256, 32)
        sig = priv.sign(data, mechanism=M.SHA256_RSA_PKCS_PSS, mechanism_param=param)
        assert pub.verify(data, sig, mechanism=M.SHA256_RSA_PKCS_PSS, mechanism_param=param)
        if have_crypto:
            n = int.from_bytes(pub[A.MODULUS], "big"); e = int.from_bytes(pub[A.PUBLIC_EXPONENT], "big")
            rsa.RSAPublicNumbers(e, n).public_key().verify(
                sig, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        return "sign/verify; pyca/cryptography agrees" if have_crypto else "sign/verify"
    check("RSA-2048 CKM_SHA256_RSA_PKCS_PSS sign/verify", rsa_pss)

    def rsa_oaep(hash_, mgf):
        def run():
            param = (hash_, mgf, None)
            ct = pub.encrypt(b"k" * 32, mechanism=M.RSA_PKCS_OAEP, mechanism_param=param)
            assert priv.decrypt(ct, mechanism=M.RSA_PKCS_OAEP, mechanism_param=param) == b"k" * 32
            return "encrypt/decrypt 32 bytes"
        return run
    check("RSA-2048 CKM_RSA_PKCS_OAEP (SHA-1/MGF1-SHA1)", rsa_oaep(M.SHA_1, pkcs11.MGF.SHA1))
    check("RSA-2048 CKM_RSA_PKCS_OAEP (SHA-256/MGF1-SHA256)", rsa_oaep(M.SHA256, pkcs11.MGF.SHA256))

    def hmac_sha256():
        k = s.generate_key(KeyType.GENERIC_SECRET, 256, capabilities=MF.SIGN | MF.VERIFY)
        mac = k.sign(data, mechanism=M.SHA256_HMAC)
        assert k.verify(data, mac, mechanism=M.SHA256_HMAC)
        kv = bytes(range(32))
        ik = s.create_object({A.CLASS: ObjectClass.SECRET_KEY, A.KEY_TYPE: KeyType.GENERIC_SECRET, A.VALUE: kv,
                              A.SIGN: True, A.VERIFY: True, A.TOKEN: False})
        assert ik.sign(data, mechanism=M.SHA256_HMAC) == hmac.new(kv, data, hashlib.sha256).digest()
        return "generated GENERIC_SECRET 256-bit key sign/verify; imported key matches Python hmac"
    check("HMAC-SHA256 (CKM_SHA256_HMAC)", hmac_sha256)

    def wrap_cbc_pad():
        kek = s.generate_key(KeyType.AES, 256, capabilities=MF.WRAP | MF.UNWRAP | MF.ENCRYPT | MF.DECRYPT)
        k = s.generate_key(KeyType.AES, 256, template={A.EXTRACTABLE: True})
        iv = s.generate_random(128)
        w = kek.wrap_key(k, mechanism=M.AES_CBC_PAD, mechanism_param=iv)
        k2 = kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, w, mechanism=M.AES_CBC_PAD, mechanism_param=iv,
                            template={A.ENCRYPT: True, A.DECRYPT: True})
        iv2 = s.generate_random(128)
        assert k2.decrypt(k.encrypt(data, mechanism_param=iv2), mechanism_param=iv2) == data
        return f"wrapped AES-256 key = {len(w)} bytes; unwrapped key decrypts"
    check("wrap/unwrap AES key with CKM_AES_CBC_PAD (key-wrap substitute)", wrap_cbc_pad)

    def wrap_oaep():
        k = s.generate_key(KeyType.AES, 256, template={A.EXTRACTABLE: True})
        wpub, wpriv = s.generate_keypair(KeyType.RSA, 2048, capabilities=MF.WRAP | MF.UNWRAP | MF.ENCRYPT | MF.DECRYPT)
        w = wpub.wrap_key(k, mechanism=M.RSA_PKCS_OAEP, mechanism_param=(M.SHA_1, pkcs11.MGF.SHA1, None))
        k2 = wpriv.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, w, mechanism=M.RSA_PKCS_OAEP,
                              mechanism_param=(M.SHA_1, pkcs11.MGF.SHA1, None),
                              template={A.ENCRYPT: True, A.DECRYPT: True})
        iv = s.generate_random(128)
        assert k2.decrypt(k.encrypt(data, mechanism_param=iv), mechanism_param=iv) == data
        return f"wrapped = {len(w)} bytes; unwrapped key decrypts"
    check("wrap/unwrap AES key with CKM_RSA_PKCS_OAEP", wrap_oaep)

    def gcm_p11():
        k = s.generate_key(KeyType.AES, 256)
        return k.encrypt(data, mechanism=M.AES_GCM, mechanism_param=pkcs11.GCMParams(b"\0" * 12, b"", 128)).hex()[:8]
    check("python-pkcs11 AES_GCM encrypt", gcm_p11, expect="FAIL")

    def ec_p11():
        from pkcs11.util.ec import encode_named_curve_parameters
        dp = s.create_domain_parameters(KeyType.EC, {A.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        dp.generate_keypair()
    check("python-pkcs11 EC P-256 generate_keypair", ec_p11, expect="FAIL")

    check("generate_random(256 bits)", lambda: f"{len(s.generate_random(256))} bytes")

    def second_login():
        with tok.open(user_pin=PIN):
            pass
    check("2nd Token.open(user_pin=...) while a logged-in session is open", second_login, expect="FAIL")

# threads: one session per thread (python-pkcs11 drops the GIL around the C calls)
def thread_test(nthreads=8, iters=200):
    errors, done = [], [0]
    lock = threading.Lock()
    with tok.open(user_pin=PIN) as s0:
        key = s0.generate_key(KeyType.AES, 256, label="probe-mt", store=False)
        def worker():
            try:
                with tok.open() as s:   # the login state is per application, shared by all sessions
                    # look the key up in this session: python-pkcs11 runs an operation in the
                    # session of the key object and serialises each session with an RLock
                    k = s.get_key(label="probe-mt", key_type=KeyType.AES)
                    for _ in range(iters):
                        iv = os.urandom(16)
                        ct = k.encrypt(data, mechanism=M.AES_CBC_PAD, mechanism_param=iv)
                        assert k.decrypt(ct, mechanism=M.AES_CBC_PAD, mechanism_param=iv) == data
                        with lock:
                            done[0] += 1
            except Exception as e:
                errors.append(repr(e))
        ts = [threading.Thread(target=worker) for _ in range(nthreads)]
        for t in ts: t.start()
        for t in ts: t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} thread errors, first: {errors[0]}")
    return f"{nthreads} threads x {iters} encrypt+decrypt, {done[0]} ok, no errors"
data = b"hsmpool openCryptoki probe " * 3
check("8 threads, one session each, same (session-object) key, AES-CBC-PAD", thread_test)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
FLAG_NAMES = [(0x1, "HW"), (0x100, "ENCRYPT"), (0x200, "DECRYPT"), (0x400, "DIGEST"), (0x800, "SIGN"),
              (0x1000, "SIGN_RECOVER"), (0x2000, "VERIFY"), (0x4000, "VERIFY_RECOVER"), (0x8000, "GENERATE"),
              (0x10000, "GENERATE_KEY_PAIR"), (0x20000, "WRAP"), (0x40000, "UNWRAP"), (0x80000, "DERIVE")]
def flag_str(v):
    return "|".join(n for b, n in FLAG_NAMES if v & b) or "-"

def mech_name(m):
    try:
        return "CKM_" + M(int(m)).name.lstrip("_")
    except ValueError:
        return f"CKM_0x{int(m):X}"

debian = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
out("# openCryptoki soft token (PKCS11_SW stdll): mechanisms and probe results")
out("#")
out("# Produced by `softhsm-config/opencryptoki.sh --probe` (as root), which sets up the token and runs")
out("# the Python probe embedded in that script (raw ctypes for exact CKR codes + python-pkcs11).")
out(f"# Date: {datetime.date.today().isoformat()}  Host: Debian {debian}, {platform.machine()}, Python {platform.python_version()}")
out(f"# Package: opencryptoki {os.environ.get('OCK_VERSION', '?')}; module {module}")
out(f"# C_GetInfo: library {tok_lib_version}, Cryptoki {tok_cryptoki}, '{tok_manuf}' / '{tok_desc}'")
out(f"# Token: slot {slot}, label '{label}', model '{tok.model}', manufacturer '{tok.manufacturer_id}'")
out(f"# python-pkcs11 {pkcs11_version}; pyca/cryptography {'yes' if have_crypto else 'not installed'}")
out("# Key sizes as reported by C_GetMechanismInfo (RSA/DH/generic secret: bits; AES/DES: bytes).")
out()
out(f"## C_GetMechanismList: {len(mechs)} mechanisms")
out()
out(f"{'code':>8}  {'mechanism':<32} {'min':>5} {'max':>5}  flags")
for m in mechs:
    mi = mech_infos[int(m)]
    out(f"{'0x%X' % int(m):>8}  {mech_name(m):<32} {mi.min_key_length:>5} {mi.max_key_length:>5}  {flag_str(int(mi.flags))}")
out()
out("## Functional checks (python-pkcs11)")
out()
for status, expect, name, detail in checks:
    note = "" if status == expect else f"  <-- UNEXPECTED (expected {expect})"
    out(f"{status:<4}  {name}: {detail}{note}")
out()
out("## Mechanisms NOT offered: return codes from raw calls (ctypes, logged-in user session)")
out()
out(f"{'mechanism':<26} {'C_GetMechanismInfo':<34} operation -> rv")
for name, (m, info_rv, what, op_rv) in raw.items():
    op = f"{what} -> {ckr(op_rv)}" if op_rv is not None else what
    out(f"{name:<26} {ckr(info_rv):<34} {op}")
out()
out("## C_Initialize and locking (CK_C_INITIALIZE_ARGS variants)")
out()
for kind, rv in locking:
    out(f"{kind:<44} -> {ckr(rv)}")
out()
with open(out_path, "w") as fh:
    fh.write("\n".join(lines).rstrip("\n") + "\n")
bad = [c for c in checks if c[0] != c[1]]
nok = sum(c[0] == "OK" for c in checks)
print(f"opencryptoki.sh: probe: {len(mechs)} mechanisms; {nok}/{len(checks)} checks OK; "
      f"{len(checks) - nok - len(bad)} expected failures; {len(bad)} unexpected", file=sys.stderr)
for status, expect, name, detail in bad:
    print(f"opencryptoki.sh: probe: UNEXPECTED {status}: {name}: {detail}", file=sys.stderr)
sys.exit(1 if any(c[0] == "FAIL" and c[1] == "OK" for c in checks) else 0)
PY
log "wrote $here/opencryptoki-mechanisms.txt"
