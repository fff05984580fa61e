# shellcheck shell=sh disable=SC2034 # the FS_* variables are this library's interface
# fleet-bootstate.sh: the boot-partition upgrade state of initramfs/CONTRACT.md, in POSIX sh.
#
# Sourced by the initramfs script (scripts/local-top/fleet-bootcount, busybox sh), the
# good-boot and deadline scripts (dash) and initramfs/test/run. Installed on a device as
# /usr/share/fleet-agent/fleet-bootstate.sh; the initramfs hook copies it to the same path.
# Needs: a POSIX sh, `cksum` (POSIX CRC; coreutils' default algorithm), cat, cp, rm, mkdir,
# sync, tail, wc. Nothing here may block a boot: every function returns, logs what failed.
#
# API (names and variables are shared with the Rust cross-test, keep them):
#   fleet_state_read DIR      -> FS_SEQ FS_UPGRADE FS_STATE FS_BOOTCOUNT FS_MAX_BOOTS
#                                FS_TRIALS FS_MAX_TRIALS FS_DEADLINE_SECS FS_SELECTOR
#                                FS_REASON FS_BOOTS (+ FS_SLOT);
#                                returns 1 (and FS_STATE=none) when neither copy is valid
#   fleet_state_write DIR     <- the FS_* variables; seq = on-disk winner's seq + 1
#   fleet_decide STATE TRIAL OVER SNAPSHOT   prints "ACTION REASON" (decision-table)
#   fleet_over                the limit the next trial boot passes (from FS_*): prints
#                             boots | trials, returns 1 when neither (the table's OVER input)
#   fleet_on_trial UPGRADE    0 when the kernel command line carries fleet.upgrade=UPGRADE
#   fleet_arm_trial DIR / fleet_disarm_trial DIR   per FS_SELECTOR (vm | rpi-tryboot)
#   fleet_log DIR WHO TEXT    DIR/fleet/boot.log (synced), then the console (stderr, or
#                             $FLEET_CONSOLE)
#   fleet_restore_boot_set DIR [ENTRY_STATE]   fleet/preupgrade/* back to the top level,
#                             config.txt last
#   fleet_reason_text CODE [BOOTS [LIMIT]]   the contract's text of a reason code
#   fleet_initramfs_act DIR   read, decide, act (CONTRACT.md §6); used by local-top
# Hooks for tests: FLEET_CMDLINE (instead of /proc/cmdline), FLEET_LVM (lvm command),
# FLEET_REBOOT (reboot command), FLEET_VCMAILBOX (vcmailbox command), FLEET_NOW (log time).

FLEET_VG=${FLEET_VG:-vg0}
FLEET_ORIGIN=${FLEET_ORIGIN:-root}
FLEET_SNAPSHOT=${FLEET_SNAPSHOT:-root_preupgrade}

# --- state file ---------------------------------------------------------------------------

fleet__is_uint() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ ${#1} -le 18 ]
}

# fleet__crc: the first number `cksum` prints for stdin.
fleet__crc() {
    cksum | {
        read -r _c _rest || exit 1
        printf '%s\n' "$_c"
    }
}

# fleet__parse FILE: parse one copy into _p_* variables; 1 when invalid (crc, syntax).
fleet__parse() {
    [ -f "$1" ] || return 1
    _p_seq=0 _p_upgrade='' _p_state='' _p_bootcount=0 _p_max_boots=0 _p_trials=0
    _p_max_trials=0 _p_deadline_secs=0 _p_selector='' _p_reason='' _p_boots=0 _p_crc=''
    _p_body=''
    _p_nl='
'
    # Read line by line; a final line without newline (torn write) is still seen.
    while IFS= read -r _p_line || [ -n "$_p_line" ]; do
        case $_p_line in
            crc=*)
                _p_crc=${_p_line#crc=}
                break
                ;;
        esac
        _p_body=$_p_body$_p_line$_p_nl
        case $_p_line in
            *=*) ;;
            *) return 1 ;;
        esac
        _p_key=${_p_line%%=*}
        _p_val=${_p_line#*=}
        case $_p_key in
            seq) _p_seq=$_p_val ;;
            upgrade) _p_upgrade=$_p_val ;;
            state) _p_state=$_p_val ;;
            bootcount) _p_bootcount=$_p_val ;;
            max_boots) _p_max_boots=$_p_val ;;
            trials) _p_trials=$_p_val ;;
            max_trials) _p_max_trials=$_p_val ;;
            deadline_secs) _p_deadline_secs=$_p_val ;;
            selector) _p_selector=$_p_val ;;
            reason) _p_reason=$_p_val ;;
            boots) _p_boots=$_p_val ;;
            '' | *[!a-z0-9_]*) return 1 ;;
            *) ;; # unknown key: ignored by readers
        esac
    done <"$1"
    fleet__is_uint "$_p_crc" || return 1
    [ "$(printf '%s' "$_p_body" | fleet__crc)" = "$_p_crc" ] || return 1
    for _p_n in "$_p_seq" "$_p_bootcount" "$_p_max_boots" "$_p_trials" "$_p_max_trials" \
        "$_p_deadline_secs" "$_p_boots"; do
        [ -z "$_p_n" ] && continue
        fleet__is_uint "$_p_n" || return 1
    done
    : "${_p_seq:=0}" "${_p_bootcount:=0}" "${_p_max_boots:=0}" "${_p_trials:=0}" \
        "${_p_max_trials:=0}" "${_p_deadline_secs:=0}" "${_p_boots:=0}"
    case $_p_state in
        '' | idle | upgrading | trial | committing | committed | rollback | rolled-back | failed) ;;
        *) return 1 ;;
    esac
    return 0
}

# fleet__winner DIR: _w_slot (a|b|empty) and _w_seq of the valid copy with the higher seq.
fleet__winner() {
    _w_slot='' _w_seq=0
    for _w_s in a b; do
        fleet__parse "$1/fleet/state.$_w_s" || continue
        if [ -z "$_w_slot" ] || [ "$_p_seq" -gt "$_w_seq" ]; then
            _w_slot=$_w_s _w_seq=$_p_seq
        fi
    done
}

fleet_state_read() {
    fleet__winner "$1"
    FS_SLOT=$_w_slot
    if [ -z "$_w_slot" ]; then
        FS_SEQ=0 FS_UPGRADE='' FS_STATE=none FS_BOOTCOUNT=0 FS_MAX_BOOTS=0 FS_TRIALS=0
        FS_MAX_TRIALS=0 FS_DEADLINE_SECS=0 FS_SELECTOR='' FS_REASON='' FS_BOOTS=0
        return 1
    fi
    fleet__parse "$1/fleet/state.$_w_slot" || return 1
    FS_SEQ=$_p_seq FS_UPGRADE=$_p_upgrade FS_STATE=${_p_state:-idle} FS_BOOTCOUNT=$_p_bootcount
    FS_MAX_BOOTS=$_p_max_boots FS_TRIALS=$_p_trials FS_MAX_TRIALS=$_p_max_trials
    FS_DEADLINE_SECS=$_p_deadline_secs FS_SELECTOR=$_p_selector
    FS_REASON=$_p_reason FS_BOOTS=$_p_boots
    return 0
}

# fleet__clean_reason TEXT: printable ASCII, no newline, at most 200 bytes.
fleet__clean_reason() {
    printf '%s' "$1" | tr -c ' -~' '?' | cut -c1-200
}

fleet_state_write() {
    _wr_dir=$1
    mkdir -p "$_wr_dir/fleet" || return 1
    case $FS_STATE in
        none | '') FS_STATE=idle ;;
        idle | upgrading | trial | committing | committed | rollback | rolled-back | failed) ;;
        *)
            fleet_log "$_wr_dir" state "refusing to write unknown state '$FS_STATE'"
            return 1
            ;;
    esac
    case $FS_UPGRADE in
        *[!A-Za-z0-9._-]*)
            fleet_log "$_wr_dir" state "refusing to write bad upgrade id '$FS_UPGRADE'"
            return 1
            ;;
    esac
    [ ${#FS_UPGRADE} -le 64 ] || return 1
    fleet__is_uint "${FS_BOOTCOUNT:-}" || FS_BOOTCOUNT=0
    fleet__is_uint "${FS_MAX_BOOTS:-}" || FS_MAX_BOOTS=0
    fleet__is_uint "${FS_TRIALS:-}" || FS_TRIALS=0
    fleet__is_uint "${FS_MAX_TRIALS:-}" || FS_MAX_TRIALS=0
    fleet__is_uint "${FS_DEADLINE_SECS:-}" || FS_DEADLINE_SECS=0
    fleet__is_uint "${FS_BOOTS:-}" || FS_BOOTS=0
    FS_REASON=$(fleet__clean_reason "$FS_REASON")
    fleet__winner "$_wr_dir"
    if [ "$_w_slot" = a ]; then _wr_slot=b; else _wr_slot=a; fi
    FS_SEQ=$((_w_seq + 1))
    _wr_body="seq=$FS_SEQ
upgrade=$FS_UPGRADE
state=$FS_STATE
bootcount=${FS_BOOTCOUNT:-0}
max_boots=${FS_MAX_BOOTS:-0}
trials=${FS_TRIALS:-0}
max_trials=${FS_MAX_TRIALS:-0}
deadline_secs=${FS_DEADLINE_SECS:-0}
selector=$FS_SELECTOR
reason=$FS_REASON
boots=${FS_BOOTS:-0}
"
    _wr_crc=$(printf '%s' "$_wr_body" | fleet__crc) || return 1
    [ -n "$_wr_crc" ] || return 1
    printf '%scrc=%s\n' "$_wr_body" "$_wr_crc" >"$_wr_dir/fleet/state.$_wr_slot" || return 1
    sync
    FS_SLOT=$_wr_slot
    fleet__console state "wrote state.$_wr_slot seq=$FS_SEQ state=$FS_STATE bootcount=${FS_BOOTCOUNT:-0} trials=${FS_TRIALS:-0} (synced)"
    return 0
}

# --- the decision (initramfs/decision-table; the Rust test checks both against it) --------

fleet_decide() {
    _d_state=$1 _d_trial=$2 _d_over=$3 _d_snap=$4
    case $_d_state in
        upgrading)
            if [ "$_d_snap" = yes ]; then echo "rollback interrupted-upgrade"; return; fi
            if [ "$_d_snap" = no ]; then echo "abandon interrupted-upgrade"; return; fi
            ;;
        trial)
            if [ "$_d_trial" = yes ] && [ "$_d_over" = no ]; then echo "count -"; return; fi
            if [ "$_d_trial" = yes ] && [ "$_d_over" = yes ] && [ "$_d_snap" = yes ]; then
                echo "rollback boot-limit"
                return
            fi
            if [ "$_d_trial" = no ] && [ "$_d_snap" = yes ]; then
                echo "rollback trial-did-not-start"
                return
            fi
            if [ "$_d_snap" = no ]; then echo "abandon snapshot-missing"; return; fi
            ;;
        committing)
            if [ "$_d_trial" = yes ]; then echo "commit -"; return; fi
            if [ "$_d_trial" = no ]; then echo "commit-reboot -"; return; fi
            ;;
        rollback)
            if [ "$_d_snap" = yes ]; then echo "rollback requested"; return; fi
            if [ "$_d_snap" = no ]; then echo "finish-rollback requested"; return; fi
            ;;
    esac
    echo "boot -"
}

# fleet_over: which limit the next trial boot passes. `boots`: bootcount + 1 > max_boots
# (boots in a row that did not reach userspace); `trials`: trials + 1 > max_trials (trial
# boots in all: hangs after the good-boot mark and reboots during probation count too;
# max_trials=0, as written by agents before it existed, is no limit). Returns 1 for neither.
fleet_over() {
    if [ $((${FS_BOOTCOUNT:-0} + 1)) -gt "${FS_MAX_BOOTS:-0}" ]; then echo boots; return 0; fi
    if [ "${FS_MAX_TRIALS:-0}" -gt 0 ] && [ $((${FS_TRIALS:-0} + 1)) -gt "$FS_MAX_TRIALS" ]; then
        echo trials
        return 0
    fi
    return 1
}

# fleet_reason_text CODE [BOOTS [LIMIT]]   (LIMIT: what fleet_over printed)
fleet_reason_text() {
    case $1:${3:-} in
        interrupted-upgrade:*) echo "power lost or reset during the upgrade" ;;
        trial-did-not-start:*) echo "the trial boot set did not come up" ;;
        boot-limit:trials) echo "${2:-?} trial boots without a commit (it reached userspace, then hung or rebooted)" ;;
        boot-limit:*) echo "${2:-?} boots without reaching userspace" ;;
        snapshot-missing:*) echo "snapshot $FLEET_VG/$FLEET_SNAPSHOT is missing" ;;
        *) echo "$1" ;;
    esac
}

# --- trial boot selection ------------------------------------------------------------------

fleet_on_trial() {
    [ -n "$1" ] || return 1
    if [ -n "${FLEET_CMDLINE+x}" ]; then
        _t_cmd=$FLEET_CMDLINE
    else
        _t_cmd=$(cat /proc/cmdline 2>/dev/null) || return 1
    fi
    for _t_w in $_t_cmd; do
        [ "$_t_w" = "fleet.upgrade=$1" ] && return 0
    done
    return 1
}

fleet__mailbox() { # value: the firmware's one-shot tryboot flag (tag 0x00038064)
    _m_cmd=${FLEET_VCMAILBOX:-vcmailbox}
    if command -v "$_m_cmd" >/dev/null 2>&1; then
        "$_m_cmd" 0x00038064 4 4 "$1" >/dev/null 2>&1 && return 0
        fleet_log "$2" selector "vcmailbox 0x00038064 4 4 $1 failed"
        return 1
    fi
    fleet_log "$2" selector "no vcmailbox here: cannot set the tryboot flag to $1 (the reboot must say '0 tryboot')"
    return 1
}

fleet_arm_trial() {
    case $FS_SELECTOR in
        vm)
            : >"$1/tryboot.flag" && sync
            ;;
        rpi-tryboot) fleet__mailbox 1 "$1" ;;
        *)
            fleet_log "$1" selector "unknown selector '$FS_SELECTOR': trial not armed"
            return 1
            ;;
    esac
}

fleet_disarm_trial() {
    case $FS_SELECTOR in
        vm)
            rm -f "$1/tryboot.flag" && sync
            ;;
        rpi-tryboot) fleet__mailbox 0 "$1" ;;
        *)
            fleet_log "$1" selector "unknown selector '$FS_SELECTOR': nothing to disarm"
            return 1
            ;;
    esac
}

# --- log -----------------------------------------------------------------------------------

fleet__now() {
    if [ -n "${FLEET_NOW:-}" ]; then echo "$FLEET_NOW"; return; fi
    _n_t=$(date +%s 2>/dev/null)
    # A board without an RTC starts in 1970: say uptime instead of a wrong date.
    if fleet__is_uint "$_n_t" && [ "$_n_t" -gt 1500000000 ]; then
        echo "$_n_t"
    else
        _n_up=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
        echo "up+${_n_up:-?}"
    fi
}

# fleet__console WHO TEXT: one line to the console only ($FLEET_CONSOLE, as the initramfs
# sets it; nothing otherwise). For progress a power-cut test can key on (state writes, the
# start of lvconvert) that would only flood boot.log.
fleet__console() {
    [ -n "${FLEET_CONSOLE:-}" ] || return 0
    printf 'fleet-bootcount: %s %s %s\n' "$(fleet__now)" "$1" "$2" >>"$FLEET_CONSOLE" 2>/dev/null
    return 0
}

# fleet_log DIR WHO TEXT: one line to DIR/fleet/boot.log, synced to the FAT, and then to the
# console: a line seen on the console is on the FAT (a power cut right after it keeps it).
# Appending changes only the file's data and size, which `sync` writes with the inode (no
# rename: CONTRACT.md §2's FAT caveat does not apply). The log is trimmed to its last 200
# lines when it passes 64 KiB. DIR may be empty (console only).
fleet_log() {
    _l_line="$(fleet__now) $2 $3"
    if [ -n "$1" ] && [ -d "$1" ] && mkdir -p "$1/fleet" 2>/dev/null; then
        _l_f=$1/fleet/boot.log
        if printf '%s\n' "$_l_line" >>"$_l_f" 2>/dev/null; then
            _l_size=$(wc -c <"$_l_f" 2>/dev/null)
            if fleet__is_uint "$_l_size" && [ "$_l_size" -gt 65536 ]; then
                tail -n 200 "$_l_f" >"$_l_f.tmp" 2>/dev/null && cat "$_l_f.tmp" >"$_l_f"
                rm -f "$_l_f.tmp"
            fi
            sync
        fi
    fi
    if [ -n "${FLEET_CONSOLE:-}" ]; then
        printf 'fleet-bootcount: %s\n' "$_l_line" >>"$FLEET_CONSOLE" 2>/dev/null
    else
        printf '%s: %s\n' "$2" "$3" >&2
    fi
    return 0
}

# --- boot set ------------------------------------------------------------------------------

# fleet_restore_boot_set DIR [ENTRY_STATE]: copy fleet/preupgrade/* to DIR, config.txt last
# (until it is copied, config.txt still boots the saved set through
# os_prefix=fleet/preupgrade/ and start_file=/fixup_file= naming the saved firmware blobs).
# The saved set holds the kernel, initramfs, cmdline.txt, *.dtb, overlays/ and the firmware
# (start*.elf, fixup*.dat, bootcode.bin): all of it is copied back.
# Only when config.txt boots the saved set: the agent points it there after the copy is
# complete (fsync'd), and the upgrade command only runs after that. Otherwise either this
# restore already ran to its end in an earlier boot (ENTRY_STATE, the state this boot
# found, is `rollback`: the last step, config.txt, was done) or the upgrade was cut before it
# switched config.txt to the saved set (the saved copy may be torn; the top-level set was
# never changed). Either way the top-level set is the old one and nothing is copied.
fleet_restore_boot_set() {
    _r_src=$1/fleet/preupgrade
    [ -d "$_r_src" ] || return 0
    if ! grep -qs '^[[:space:]]*os_prefix=fleet/preupgrade/' "$1/config.txt"; then
        if [ "${2:-}" = rollback ]; then
            fleet_log "$1" restore "boot set already restored (by an earlier boot of this rollback: config.txt no longer boots the saved set)"
        else
            fleet_log "$1" restore "config.txt never booted the saved set (cut before the upgrade switched to it): the top-level set is the old one, kept; the saved copy is not used"
        fi
        return 0
    fi
    _r_rc=0 _r_done=''
    for _r_f in "$_r_src"/* "$_r_src"/.[!.]*; do
        [ -e "$_r_f" ] || continue
        _r_b=${_r_f##*/}
        [ "$_r_b" = config.txt ] && continue
        if [ -d "$_r_f" ]; then
            rm -rf "${1:?}/$_r_b" && cp -r "$_r_f" "$1/$_r_b" || _r_rc=1
            _r_done="$_r_done $_r_b/"
        else
            cp "$_r_f" "$1/$_r_b.fleet-new" && mv -f "$1/$_r_b.fleet-new" "$1/$_r_b" || _r_rc=1
            _r_done="$_r_done $_r_b"
        fi
    done
    sync
    if [ $_r_rc -ne 0 ]; then
        fleet_log "$1" restore "copying the saved boot set failed; config.txt left as it is"
        return 1
    fi
    if [ -f "$_r_src/config.txt" ]; then
        cp "$_r_src/config.txt" "$1/config.txt.fleet-new" && mv -f "$1/config.txt.fleet-new" "$1/config.txt" || return 1
        sync
        _r_done="$_r_done config.txt"
    fi
    fleet_log "$1" restore "saved boot set copied back:$_r_done"
    return 0
}

# fleet__commit_config DIR: make config.txt the plain (new) default again.
fleet__commit_config() {
    if [ -f "$1/fleet/preupgrade/config.txt" ]; then
        cp "$1/fleet/preupgrade/config.txt" "$1/config.txt.fleet-new" \
            && mv -f "$1/config.txt.fleet-new" "$1/config.txt" && sync
    fi
}

# --- LVM -----------------------------------------------------------------------------------

fleet__lvm() { ${FLEET_LVM:-lvm} "$@"; }

fleet__uptime() { _u=$(cut -d' ' -f1 /proc/uptime 2>/dev/null); echo "${_u:-0}"; }

# fleet__secs_since T0: elapsed seconds (2 decimals) since uptime T0.
fleet__secs_since() {
    awk -v a="$1" -v b="$(fleet__uptime)" 'BEGIN { printf "%.2f", b - a }' 2>/dev/null || echo '?'
}

# fleet_snapshot_lookup DIR: prints yes/no; returns 1 when LVM cannot tell (VG not there).
fleet_snapshot_lookup() {
    if command -v udevadm >/dev/null 2>&1; then udevadm settle --timeout=30 >/dev/null 2>&1; fi
    if ! fleet__lvm vgchange -ay "$FLEET_VG" >/dev/null 2>&1; then
        if ! fleet__lvm vgs "$FLEET_VG" >/dev/null 2>&1; then
            fleet_log "$1" initramfs "cannot look up $FLEET_VG/$FLEET_SNAPSHOT: volume group $FLEET_VG not available"
            return 1
        fi
    fi
    if fleet__lvm lvs "$FLEET_VG/$FLEET_SNAPSHOT" >/dev/null 2>&1; then echo yes; else echo no; fi
}

# fleet_merge DIR: lvconvert --merge the snapshot; finish a deferred merge by reactivating
# the origin. 0 when the snapshot is gone afterwards.
# No dmeventd runs in the initramfs: without activation/monitoring=0, lvconvert and lvchange
# try to register the thin pool with it and print "WARNING: Failed to connect to dmeventd"
# / "Failed to monitor" lines on every merge (the pool is monitored again once the system's
# lvm2-monitor runs, if it is enabled there).
FLEET_LVM_NOMONITOR="activation{monitoring=0}"
fleet_merge() {
    _g_t0=$(fleet__uptime)
    fleet__console initramfs "lvconvert --merge $FLEET_VG/$FLEET_SNAPSHOT: starting"
    _g_out=$(fleet__lvm lvconvert -y --merge "$FLEET_VG/$FLEET_SNAPSHOT" --config "$FLEET_LVM_NOMONITOR" 2>&1)
    _g_rc=$?
    fleet_log "$1" initramfs "lvconvert --merge $FLEET_VG/$FLEET_SNAPSHOT: exit $_g_rc: $(printf '%s' "$_g_out" | tr '\n' ' ' | cut -c1-300)"
    if ! fleet__lvm lvs "$FLEET_VG/$FLEET_SNAPSHOT" >/dev/null 2>&1; then
        fleet_log "$1" initramfs "merge: immediate; $FLEET_VG/$FLEET_ORIGIN restored in $(fleet__secs_since "$_g_t0") s"
        return 0
    fi
    fleet_log "$1" initramfs "merge: deferred; reactivating $FLEET_VG/$FLEET_ORIGIN to finish it"
    fleet__lvm lvchange -an "$FLEET_VG/$FLEET_ORIGIN" --config "$FLEET_LVM_NOMONITOR" >/dev/null 2>&1
    fleet__lvm lvchange -ay "$FLEET_VG/$FLEET_ORIGIN" --config "$FLEET_LVM_NOMONITOR" >/dev/null 2>&1
    if ! fleet__lvm lvs "$FLEET_VG/$FLEET_SNAPSHOT" >/dev/null 2>&1; then
        fleet_log "$1" initramfs "merge: finished by reactivation; $FLEET_VG/$FLEET_ORIGIN restored in $(fleet__secs_since "$_g_t0") s"
        return 0
    fi
    fleet_log "$1" initramfs "merge: FAILED, $FLEET_VG/$FLEET_SNAPSHOT still there after $(fleet__secs_since "$_g_t0") s"
    return 1
}

# --- the initramfs's part (CONTRACT.md §6) ------------------------------------------------

fleet__reboot() {
    sync
    fleet_log "$1" initramfs "rebooting"
    # shellcheck disable=SC2086 # FLEET_REBOOT is a command line
    ${FLEET_REBOOT:-reboot -f}
}

# fleet_initramfs_act DIR: read the state on the mounted boot partition DIR, decide, act.
# Prints the action taken; returns 0 always (a normal boot continues), except that actions
# ending in a reboot call $FLEET_REBOOT (default `reboot -f`) first.
fleet_initramfs_act() {
    _a_dir=$1
    if ! fleet_state_read "$_a_dir"; then
        if [ -e "$_a_dir/fleet/state.a" ] || [ -e "$_a_dir/fleet/state.b" ]; then
            fleet_log "$_a_dir" initramfs "no valid state copy (crc or syntax): booting normally"
        else
            fleet_log "" initramfs "no upgrade state: booting normally"
        fi
        echo boot
        return 0
    fi
    if fleet_on_trial "$FS_UPGRADE"; then _a_trial=yes; else _a_trial=no; fi
    if _a_limit=$(fleet_over); then _a_over=yes; else _a_over=no _a_limit=''; fi
    # Look the snapshot up only when the answer changes the action.
    _a_dy=$(fleet_decide "$FS_STATE" "$_a_trial" "$_a_over" yes)
    _a_dn=$(fleet_decide "$FS_STATE" "$_a_trial" "$_a_over" no)
    if [ "$_a_dy" = "$_a_dn" ]; then
        _a_snap=-
        _a_d=$_a_dy
    elif _a_snap=$(fleet_snapshot_lookup "$_a_dir"); then
        _a_d=$(fleet_decide "$FS_STATE" "$_a_trial" "$_a_over" "$_a_snap")
    else
        fleet_log "$_a_dir" initramfs "state=$FS_STATE: snapshot unknown, leaving the state as it is and booting"
        echo boot
        return 0
    fi
    _a_action=${_a_d%% *}
    _a_code=${_a_d#* }
    _a_what="state=$FS_STATE upgrade=$FS_UPGRADE trial=$_a_trial trials=$FS_TRIALS/$FS_MAX_TRIALS bootcount=$FS_BOOTCOUNT max_boots=$FS_MAX_BOOTS snapshot=$_a_snap -> $_a_action"
    [ "$_a_code" = - ] || _a_what="$_a_what ($_a_code)"
    case $FS_STATE in
        idle | committed | rolled-back | failed) fleet_log "" initramfs "$_a_what" ;;
        *) fleet_log "$_a_dir" initramfs "$_a_what" ;;
    esac
    case $_a_action in
        boot) ;;
        count)
            FS_BOOTCOUNT=$((FS_BOOTCOUNT + 1))
            FS_TRIALS=$((FS_TRIALS + 1))
            fleet_state_write "$_a_dir" || fleet_log "$_a_dir" initramfs "writing bootcount failed"
            fleet_arm_trial "$_a_dir"
            ;;
        rollback)
            case $_a_code:$_a_limit in
                boot-limit:trials) FS_BOOTS=$((FS_TRIALS + 1)) ;;
                boot-limit:*) FS_BOOTS=$((FS_BOOTCOUNT + 1)) ;;
                requested:*) ;;
                *) FS_BOOTS=$FS_BOOTCOUNT ;;
            esac
            if [ -z "$FS_REASON" ]; then
                if [ "$_a_code" = requested ]; then FS_REASON="rollback requested"
                else FS_REASON=$(fleet_reason_text "$_a_code" "$FS_BOOTS" "$_a_limit"); fi
            fi
            _a_entry=$FS_STATE
            FS_STATE=rollback
            fleet_state_write "$_a_dir" || fleet_log "$_a_dir" initramfs "writing state=rollback failed"
            fleet_restore_boot_set "$_a_dir" "$_a_entry"
            if fleet_merge "$_a_dir"; then
                fleet_disarm_trial "$_a_dir"
                FS_STATE=rolled-back
                fleet_state_write "$_a_dir"
                rm -rf "$_a_dir/fleet/preupgrade"
                fleet_log "$_a_dir" initramfs "rolled back: $FS_REASON"
                echo rollback
                fleet__reboot "$_a_dir"
                return 0
            fi
            fleet_log "$_a_dir" initramfs "rollback incomplete (merge failed): state stays rollback, booting; the next boot tries again"
            ;;
        finish-rollback)
            [ -n "$FS_REASON" ] || FS_REASON="rollback requested"
            fleet_restore_boot_set "$_a_dir" "$FS_STATE"
            fleet_disarm_trial "$_a_dir"
            FS_STATE=rolled-back
            fleet_state_write "$_a_dir"
            rm -rf "$_a_dir/fleet/preupgrade"
            fleet_log "$_a_dir" initramfs "rollback finished: $FS_REASON"
            echo finish-rollback
            fleet__reboot "$_a_dir"
            return 0
            ;;
        commit | commit-reboot)
            fleet__commit_config "$_a_dir" || fleet_log "$_a_dir" initramfs "restoring config.txt failed"
            FS_STATE=committed
            fleet_state_write "$_a_dir"
            if [ "$_a_action" = commit-reboot ]; then
                echo commit-reboot
                fleet__reboot "$_a_dir"
                return 0
            fi
            ;;
        abandon)
            FS_STATE=failed
            FS_REASON=$(fleet_reason_text "$_a_code" "$FS_BOOTCOUNT")
            fleet_state_write "$_a_dir"
            ;;
    esac
    echo "$_a_action"
    return 0
}
