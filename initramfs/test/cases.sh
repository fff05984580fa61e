#!/bin/sh
# Tests of initramfs/lib/fleet-bootstate.sh on this host, in temp directories (no device
# mapper needed: `lvm` is a fake that keeps its volumes as files). Run by initramfs/test/run
# under every POSIX shell found (dash, busybox sh, bash --posix).
# Usage: sh cases.sh   (prints one line per failed check, a tally last; exit 1 on failure)
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
LIB=$HERE/../lib/fleet-bootstate.sh
TABLE=$HERE/../decision-table
# shellcheck source=../lib/fleet-bootstate.sh
. "$LIB"

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); }
bad() {
    FAIL=$((FAIL + 1))
    echo "FAIL: $*"
}
check() { # description command...
    _c_what=$1
    shift
    if "$@"; then ok; else bad "$_c_what"; fi
}
eq() { # description actual expected
    if [ "$2" = "$3" ]; then ok; else bad "$1: got '$2', want '$3'"; fi
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export FLEET_NOW=1700000000
FLEET_CONSOLE=/dev/null
n=0
newdir() {
    n=$((n + 1))
    D=$TMP/boot$n
    mkdir -p "$D/fleet"
}
set_state() { # state upgrade bootcount max_boots [selector] [reason]; trials from TRIALS=t/max
    FS_STATE=$1 FS_UPGRADE=$2 FS_BOOTCOUNT=$3 FS_MAX_BOOTS=$4 FS_DEADLINE_SECS=120
    FS_SELECTOR=${5:-vm} FS_REASON=${6:-} FS_BOOTS=0
    FS_TRIALS=${TRIALS%/*} FS_MAX_TRIALS=${TRIALS#*/}
}
TRIALS=0/0

# --- crc -----------------------------------------------------------------------------------
eq "POSIX cksum check value of '123456789'" "$(printf '123456789' | fleet__crc)" 930766865

# A golden state file (also for the Rust side): its crc was computed with coreutils cksum.
newdir
cp "$HERE/golden-state" "$D/fleet/state.a"
check "golden state file reads" fleet_state_read "$D"
eq "golden: seq" "$FS_SEQ" 17
eq "golden: all fields" "$FS_UPGRADE|$FS_STATE|$FS_BOOTCOUNT|$FS_MAX_BOOTS|$FS_TRIALS|$FS_MAX_TRIALS|$FS_DEADLINE_SECS|$FS_SELECTOR|$FS_REASON|$FS_BOOTS" \
    "2026-11-23-a|trial|1|3|2|5|600|vm|deadline: not committed within 600 s|0"
# Writing the same values from seq 16 reproduces the golden bytes exactly.
newdir
printf 'seq=16\ncrc=%s\n' "$(printf 'seq=16\n' | fleet__crc)" >"$D/fleet/state.b"
TRIALS=2/5
set_state trial 2026-11-23-a 1 3 vm "deadline: not committed within 600 s"
FS_DEADLINE_SECS=600
TRIALS=0/0
check "write after seq 16" fleet_state_write "$D"
check "writer output is byte-identical to the golden file" cmp -s "$D/fleet/state.a" "$HERE/golden-state"

# --- read / write / seq / slots -------------------------------------------------------------
newdir
fleet_state_read "$D"
eq "no state: read returns 1" "$?" 1
eq "no state: FS_STATE" "$FS_STATE" none
set_state upgrading u-1 0 2
check "first write" fleet_state_write "$D"
check "first write goes to state.a" test -f "$D/fleet/state.a" -a ! -e "$D/fleet/state.b"
fleet_state_read "$D"
eq "first write: seq and slot" "$FS_SEQ $FS_SLOT $FS_STATE $FS_UPGRADE $FS_MAX_BOOTS" "1 a upgrading u-1 2"
FS_STATE=trial
fleet_state_write "$D"
eq "second write goes to state.b" "$FS_SLOT" b
fleet_state_read "$D"
eq "second write: seq 2 wins" "$FS_SEQ $FS_SLOT $FS_STATE" "2 b trial"
FS_BOOTCOUNT=1
fleet_state_write "$D"
fleet_state_read "$D"
eq "third write goes back to state.a" "$FS_SEQ $FS_SLOT $FS_BOOTCOUNT" "3 a 1"
eq "state.a's crc is cksum of the bytes before crc=" \
    "$(sed '/^crc=/,$d' "$D/fleet/state.a" | cksum | cut -d' ' -f1)" \
    "$(sed -n 's/^crc=//p' "$D/fleet/state.a")"
eq "file layout (keys in contract order)" "$(cut -d= -f1 "$D/fleet/state.a" | tr '\n' ' ')" \
    "seq upgrade state bootcount max_boots trials max_trials deadline_secs selector reason boots crc "

# torn write: the copy being written is cut short -> the previous state stays in force
head -c 40 "$D/fleet/state.a" >"$D/fleet/x" && mv "$D/fleet/x" "$D/fleet/state.a"
fleet_state_read "$D"
eq "torn newest copy: the previous copy wins" "$FS_SEQ $FS_SLOT $FS_STATE $FS_BOOTCOUNT" "2 b trial 0"
FS_BOOTCOUNT=5
fleet_state_write "$D"
eq "after a torn copy the writer overwrites the torn one" "$FS_SLOT $FS_SEQ" "a 3"

# flipped value with a stale crc -> that copy is dropped
sed 's/^bootcount=5$/bootcount=0/' "$D/fleet/state.a" >"$D/fleet/x" && mv "$D/fleet/x" "$D/fleet/state.a"
fleet_state_read "$D"
eq "crc mismatch: the other copy wins" "$FS_SEQ $FS_SLOT" "2 b"
# torn exactly before the crc line
sed '/^crc=/d' "$D/fleet/state.b" >"$D/fleet/x" && mv "$D/fleet/x" "$D/fleet/state.b"
fleet_state_read "$D"
eq "both copies invalid: no state" "$?:$FS_STATE" "1:none"
FS_STATE=idle FS_UPGRADE=''
fleet_state_write "$D"
eq "both invalid: write goes to state.a with seq 1" "$FS_SLOT $FS_SEQ" "a 1"

# higher seq wins regardless of slot; unknown keys ignored; missing keys read as zero
newdir
mk() { # file body
    printf '%scrc=%s\n' "$2" "$(printf '%s' "$2" | fleet__crc)" >"$1"
}
mk "$D/fleet/state.a" "seq=9
state=trial
upgrade=x
future_key=whatever
"
mk "$D/fleet/state.b" "seq=8
state=idle
"
fleet_state_read "$D"
eq "seq 9 in slot a beats seq 8 in slot b; unknown key ignored; missing keys zero" \
    "$FS_SEQ $FS_SLOT $FS_STATE $FS_UPGRADE $FS_BOOTCOUNT $FS_MAX_BOOTS [$FS_REASON]" "9 a trial x 0 0 []"
mk "$D/fleet/state.a" "seq=9
state=exploded
"
fleet_state_read "$D"
eq "an unknown state value makes the copy invalid" "$FS_SEQ $FS_STATE" "8 idle"
mk "$D/fleet/state.a" "seq=10
bootcount=1x
"
fleet_state_read "$D"
eq "a non-numeric count makes the copy invalid" "$FS_SEQ" 8
mk "$D/fleet/state.a" "seq=10
just garbage
"
fleet_state_read "$D"
eq "a line without = makes the copy invalid" "$FS_SEQ" 8

# writer sanitising
newdir
set_state rollback 'bad id!' 0 2
fleet_state_write "$D" 2>/dev/null
eq "writer refuses a bad upgrade id" "$?" 1
set_state rollback ok-id 0 2 vm "$(printf 'multi\nline\ttext')"
fleet_state_write "$D"
fleet_state_read "$D"
eq "reason: newline and tab replaced" "$FS_REASON" "multi?line?text"
set_state rollback ok-id 0 2 vm "$(printf '%0300d' 0)"
fleet_state_write "$D"
fleet_state_read "$D"
eq "reason: at most 200 bytes" "${#FS_REASON}" 200

# --- decide: every combination against initramfs/decision-table ----------------------------
table_decide() { # state trial over snapshot -> "action reason" (first matching row)
    awk -v s="$1" -v t="$2" -v o="$3" -v n="$4" '
        /^#/ || NF == 0 { next }
        ($1 == "*" || $1 == s) && ($2 == "*" || $2 == t) && ($3 == "*" || $3 == o) && ($4 == "*" || $4 == n) {
            print $5, $6; exit
        }' "$TABLE"
}
combos=0
for s in none idle upgrading trial committing committed rollback rolled-back failed; do
    for t in yes no; do for o in yes no; do for sn in yes no; do
        combos=$((combos + 1))
        eq "decide $s $t $o $sn" "$(fleet_decide "$s" "$t" "$o" "$sn")" "$(table_decide "$s" "$t" "$o" "$sn")"
    done; done; done
done
eq "decide: combinations checked" "$combos" 72

# --- on trial --------------------------------------------------------------------------------
FLEET_CMDLINE="console=ttyS0 root=/dev/vg0/root fleet.upgrade=u-7 quiet"
check "on trial: exact word" fleet_on_trial u-7
check "not on trial: other upgrade" eval '! fleet_on_trial u-70'
check "not on trial: prefix" eval '! fleet_on_trial u-'
check "not on trial: empty id" eval '! fleet_on_trial ""'
FLEET_CMDLINE="console=ttyS0 xfleet.upgrade=u-7"
check "not on trial: another key" eval '! fleet_on_trial u-7'
unset FLEET_CMDLINE

# --- arm / disarm ----------------------------------------------------------------------------
newdir
FS_SELECTOR=vm
fleet_arm_trial "$D"
check "vm: arm creates tryboot.flag" test -f "$D/tryboot.flag"
fleet_disarm_trial "$D"
check "vm: disarm removes tryboot.flag" test ! -e "$D/tryboot.flag"
cat >"$TMP/vcmailbox" <<EOF
#!/bin/sh
echo "\$*" >>"$TMP/mailbox.calls"
EOF
chmod +x "$TMP/vcmailbox"
FS_SELECTOR=rpi-tryboot FLEET_VCMAILBOX=$TMP/vcmailbox
fleet_arm_trial "$D"
fleet_disarm_trial "$D"
eq "rpi-tryboot: mailbox tag 0x00038064 set then cleared" "$(tr '\n' ';' <"$TMP/mailbox.calls")" \
    "0x00038064 4 4 1;0x00038064 4 4 0;"
FLEET_VCMAILBOX=$TMP/no-such-vcmailbox
fleet_arm_trial "$D"
eq "rpi-tryboot without vcmailbox: arm fails" "$?" 1
check "rpi-tryboot without vcmailbox: logged" grep -q 'no vcmailbox here' "$D/fleet/boot.log"
check "rpi-tryboot never touches tryboot.flag" test ! -e "$D/tryboot.flag"
unset FLEET_VCMAILBOX

# --- log trimming ----------------------------------------------------------------------------
newdir
i=0
while [ $i -lt 700 ]; do
    printf '1700000000 filler %0100d\n' "$i" >>"$D/fleet/boot.log"
    i=$((i + 1))
done
fleet_log "$D" test "the last line"
eq "log over 64 KiB trimmed to 200 lines" "$(wc -l <"$D/fleet/boot.log" | tr -d ' ')" 200
eq "log keeps the newest line" "$(tail -n 1 "$D/fleet/boot.log")" "1700000000 test the last line"

# --- restore boot set ------------------------------------------------------------------------
newdir
mkdir -p "$D/fleet/preupgrade/overlays"
echo old-kernel >"$D/fleet/preupgrade/vmlinuz"
echo old-ovl >"$D/fleet/preupgrade/overlays/a.dtbo"
echo "kernel=vmlinuz" >"$D/fleet/preupgrade/config.txt"
for f in start4.elf fixup4.dat bootcode.bin; do
    echo "old-$f" >"$D/fleet/preupgrade/$f"
    echo "new-$f" >"$D/$f"
done
echo new-kernel >"$D/vmlinuz"
printf 'kernel=vmlinuz\n[all]\nos_prefix=fleet/preupgrade/\nstart_file=fleet/preupgrade/start4.elf\n' >"$D/config.txt"
fleet_restore_boot_set "$D"
eq "restore: kernel, overlays, config.txt back" \
    "$(cat "$D/vmlinuz" "$D/overlays/a.dtbo" "$D/config.txt" | tr '\n' ' ')" "old-kernel old-ovl kernel=vmlinuz "
eq "restore: the firmware blobs back (start4.elf, fixup4.dat, bootcode.bin)" \
    "$(cat "$D/start4.elf" "$D/fixup4.dat" "$D/bootcode.bin" | tr '\n' ' ')" "old-start4.elf old-fixup4.dat old-bootcode.bin "
check "restore: logged with what was copied, config.txt last" \
    grep -q 'restore saved boot set copied back: bootcode.bin fixup4.dat overlays/ start4.elf vmlinuz config.txt$' "$D/fleet/boot.log"

# A resumed rollback (state=rollback on entry, config.txt already the restored one) says so.
newdir
mkdir -p "$D/fleet/preupgrade"
echo old-start >"$D/fleet/preupgrade/start4.elf"
echo "kernel=vmlinuz" >"$D/fleet/preupgrade/config.txt"
echo old-start >"$D/start4.elf"
echo "kernel=vmlinuz" >"$D/config.txt"
fleet_restore_boot_set "$D" rollback
check "restore resumed: 'already restored' logged" grep -q 'restore boot set already restored' "$D/fleet/boot.log"
check "restore resumed: nothing worded as a failure" test "$(grep -c 'not restored\|failed' "$D/fleet/boot.log")" -eq 0

newdir
mkdir -p "$D/fleet/preupgrade"
echo torn >"$D/fleet/preupgrade/vmlinuz"
echo "kernel=vmlinuz" >"$D/fleet/preupgrade/config.txt"
echo old-kernel >"$D/vmlinuz"
echo "kernel=vmlinuz" >"$D/config.txt"
fleet_restore_boot_set "$D" upgrading
eq "restore: a saved set config.txt does not boot (torn copy) is not restored" "$(cat "$D/vmlinuz")" old-kernel
check "restore of a saved set never booted: logged as such" grep -q 'restore config.txt never booted the saved set' "$D/fleet/boot.log"

# --- durable log: the line is on the FAT (synced) before the console shows it ------------------
newdir
OUT=$TMP/console.out
: >"$OUT"
sync() { echo "SYNC $(wc -l <"$D/fleet/boot.log" | tr -d ' ')" >>"$OUT"; }
FLEET_CONSOLE=$OUT fleet_log "$D" initramfs "merge: immediate"
unset -f sync
eq "log: append, sync, then the console line" "$(tr '\n' ';' <"$OUT")" \
    "SYNC 1;fleet-bootcount: 1700000000 initramfs merge: immediate;"

# --- the initramfs action with a fake lvm ----------------------------------------------------
# Fake LVM state in $LV: snapshot file = vg0/root_preupgrade exists; mode = immediate |
# deferred | fail; novg = no volume group. Every call is appended to $LV/calls.
LV=$TMP/lvm
mkdir -p "$LV"
cat >"$TMP/fake-lvm" <<EOF
#!/bin/sh
echo "\$*" >>"$LV/calls"
[ -e "$LV/novg" ] && exit 5
case "\$1 \$2 \$3" in
    "vgchange -ay vg0" | "vgs vg0 "*) exit 0 ;;
    "lvs vg0/root_preupgrade"*) [ -e "$LV/snapshot" ]; exit ;;
    "lvconvert -y --merge")
        case \$(cat "$LV/mode") in
            immediate) rm -f "$LV/snapshot"; echo "Merging of volume vg0/root_preupgrade started." ;;
            deferred) echo "Delaying merge since origin is open." ;;
            fail) echo "failed"; exit 5 ;;
        esac ;;
    "lvchange -ay vg0/root") [ "\$(cat "$LV/mode")" = deferred ] && rm -f "$LV/snapshot"; exit 0 ;;
    "lvchange -an vg0/root") exit 0 ;;
esac
exit 0
EOF
chmod +x "$TMP/fake-lvm"
cat >"$TMP/fake-reboot" <<EOF
#!/bin/sh
echo reboot >>"$LV/calls"
EOF
chmod +x "$TMP/fake-reboot"
FLEET_LVM=$TMP/fake-lvm FLEET_REBOOT=$TMP/fake-reboot
export FLEET_LVM FLEET_REBOOT

# scenario STATE UPGRADE BOOTCOUNT MAX_BOOTS CMDLINE SNAPSHOT(yes|no|novg) MODE [REASON]
scenario() {
    newdir
    rm -f "$LV"/*
    echo "$7" >"$LV/mode"
    [ "$6" = yes ] && : >"$LV/snapshot"
    [ "$6" = novg ] && : >"$LV/novg"
    mkdir -p "$D/fleet/preupgrade"
    echo old-kernel >"$D/fleet/preupgrade/vmlinuz"
    echo "kernel=vmlinuz" >"$D/fleet/preupgrade/config.txt"
    echo new-kernel >"$D/vmlinuz"
    printf 'kernel=vmlinuz\n[all]\nos_prefix=fleet/preupgrade/\n' >"$D/config.txt"
    : >"$LV/calls"
    if [ "$1" != none ]; then
        set_state "$1" "$2" "$3" "$4" vm "${8:-}"
        fleet_state_write "$D"
    fi
    FLEET_CMDLINE=$5
    ACT=$(fleet_initramfs_act "$D" 2>/dev/null | tail -n 1)
    unset FLEET_CMDLINE
    fleet_state_read "$D"
    CALLS=$(tr '\n' ';' <"$LV/calls")
}
TRIAL_CMD="root=/dev/vg0/root fleet.upgrade=u1"
OLD_CMD="root=/dev/vg0/root"

scenario trial u1 0 2 "$TRIAL_CMD" yes immediate
eq "trial boot 1: count" "$ACT|$FS_STATE|$FS_BOOTCOUNT" "count|trial|1"
check "trial boot 1: trial armed again" test -f "$D/tryboot.flag"
eq "trial boot 1: LVM not touched" "$CALLS" ""
check "trial boot 1: logged to boot.log" grep -q 'state=trial upgrade=u1 trial=yes trials=0/0 bootcount=0 max_boots=2 snapshot=- -> count' "$D/fleet/boot.log"

# A system that reaches userspace (the good-boot unit resets bootcount) and then hangs or
# reboots before the commit: each trial boot counts in `trials`, never reset, up to
# max_trials; the next one rolls back.
TRIALS=2/4
scenario trial u1 0 2 "$TRIAL_CMD" yes immediate
eq "late failure, trial boot 3 of 4: count both counters" "$ACT|$FS_STATE|$FS_BOOTCOUNT|$FS_TRIALS|$FS_MAX_TRIALS" \
    "count|trial|1|3|4"
check "late failure: logged with both counters" grep -q 'trial=yes trials=2/4 bootcount=0 max_boots=2 snapshot=- -> count' "$D/fleet/boot.log"
TRIALS=4/4
scenario trial u1 0 2 "$TRIAL_CMD" yes immediate
eq "late failure past max_trials: rollback, boots = trial boots" "$ACT|$FS_STATE|$FS_BOOTS|$FS_REASON" \
    "rollback|rolled-back|5|5 trial boots without a commit (it reached userspace, then hung or rebooted)"
eq "late failure past max_trials: merged, then reboot" "$CALLS" \
    "vgchange -ay vg0;lvs vg0/root_preupgrade;lvconvert -y --merge vg0/root_preupgrade --config activation{monitoring=0};lvs vg0/root_preupgrade;reboot;"
TRIALS=9/0
scenario trial u1 0 2 "$TRIAL_CMD" yes immediate
eq "max_trials=0 (an older agent's state): no total limit" "$ACT|$FS_TRIALS" "count|10"
TRIALS=1/4
scenario trial u1 2 2 "$TRIAL_CMD" yes immediate
eq "both limits: the boot limit in a row is named first" "$ACT|$FS_BOOTS|$FS_REASON" \
    "rollback|3|3 boots without reaching userspace"
TRIALS=0/0

scenario trial u1 2 2 "$TRIAL_CMD" yes immediate
eq "trial over the limit: rollback, rolled-back, boots" "$ACT|$FS_STATE|$FS_BOOTS|$FS_REASON" \
    "rollback|rolled-back|3|3 boots without reaching userspace"
check "rollback: old kernel and config back" test "$(cat "$D/vmlinuz" "$D/config.txt")" = "old-kernel
kernel=vmlinuz"
check "rollback: saved set removed, trial disarmed" test ! -e "$D/fleet/preupgrade" -a ! -e "$D/tryboot.flag"
eq "rollback: lvm calls, then reboot" "$CALLS" \
    "vgchange -ay vg0;lvs vg0/root_preupgrade;lvconvert -y --merge vg0/root_preupgrade --config activation{monitoring=0};lvs vg0/root_preupgrade;reboot;"
check "rollback: immediate merge logged with its time" grep -q 'merge: immediate; vg0/root restored in' "$D/fleet/boot.log"

# The console shows each state write and the start of lvconvert (a power-cut test keys on
# them), in order: state=rollback written, boot set restored, lvconvert, merged, rolled-back.
OUT=$TMP/console.out
: >"$OUT"
FLEET_CONSOLE=$OUT
scenario trial u1 2 2 "$TRIAL_CMD" yes immediate
FLEET_CONSOLE=/dev/null
eq "console: state writes, restore, lvconvert start, merge, in order" \
    "$(sed -n 's/^fleet-bootcount: 1700000000 \([a-z]*\) \(wrote state\.. seq=[0-9]* state=[a-z-]*\|saved boot set\|lvconvert --merge vg0\/root_preupgrade: [a-z]*\|merge: [a-z]*\|rolled back\).*/\1 \2/p' "$OUT" | sed 's/seq=[0-9]* //' | tr '\n' ';')" \
    "state wrote state.a state=trial;state wrote state.b state=rollback;restore saved boot set;initramfs lvconvert --merge vg0/root_preupgrade: starting;initramfs lvconvert --merge vg0/root_preupgrade: exit;initramfs merge: immediate;state wrote state.a state=rolled-back;initramfs rolled back;"

scenario trial u1 2 2 "$TRIAL_CMD" yes deferred
eq "deferred merge finished by reactivating the origin" "$ACT|$FS_STATE" "rollback|rolled-back"
check "deferred merge: logged" grep -q 'merge: finished by reactivation' "$D/fleet/boot.log"
case $CALLS in *"lvchange -an vg0/root --config activation{monitoring=0};lvchange -ay vg0/root --config activation{monitoring=0};"*) ok ;; *) bad "deferred: no reactivation in $CALLS" ;; esac

scenario trial u1 2 2 "$TRIAL_CMD" yes fail
eq "merge fails: state stays rollback, no reboot, boot continues" "$ACT|$FS_STATE|$(grep -c reboot "$LV/calls")" \
    "rollback|rollback|0"

scenario trial u1 0 2 "$OLD_CMD" yes immediate
eq "old set booted with state=trial: rollback (trial did not start)" "$ACT|$FS_STATE|$FS_REASON|$FS_BOOTS" \
    "rollback|rolled-back|the trial boot set did not come up|0"

scenario trial u1 2 2 "$TRIAL_CMD" no immediate
eq "over the limit without a snapshot: abandon" "$ACT|$FS_STATE|$FS_REASON" \
    "abandon|failed|snapshot vg0/root_preupgrade is missing"

scenario upgrading u1 0 2 "$OLD_CMD" yes immediate
eq "power lost during the upgrade: rollback" "$ACT|$FS_STATE|$FS_REASON" \
    "rollback|rolled-back|power lost or reset during the upgrade"
scenario upgrading u1 0 2 "$OLD_CMD" no immediate
eq "lost before the snapshot: abandon" "$ACT|$FS_STATE" "abandon|failed"

scenario committing u1 0 2 "$TRIAL_CMD" yes immediate
eq "committing on the trial: commit, boot on" "$ACT|$FS_STATE|$(cat "$D/config.txt")|$CALLS" \
    "commit|committed|kernel=vmlinuz|"
scenario committing u1 0 2 "$OLD_CMD" yes immediate
eq "committing on the old set: commit and reboot" "$ACT|$FS_STATE|$CALLS" "commit-reboot|committed|reboot;"

scenario rollback u1 0 2 "$TRIAL_CMD" yes immediate "deadline: not committed within 120 s"
eq "requested rollback keeps its reason" "$ACT|$FS_STATE|$FS_REASON" \
    "rollback|rolled-back|deadline: not committed within 120 s"
scenario rollback u1 0 2 "$OLD_CMD" no immediate "deadline: not committed within 120 s"
eq "rollback already merged: finish" "$ACT|$FS_STATE|$(cat "$D/vmlinuz")" "finish-rollback|rolled-back|old-kernel"

scenario trial u1 2 2 "$TRIAL_CMD" novg immediate
eq "no volume group: leave the state, boot" "$ACT|$FS_STATE|$FS_BOOTCOUNT" "boot|trial|2"

for s in idle committed rolled-back failed; do
    scenario "$s" u1 0 2 "$TRIAL_CMD" yes immediate
    eq "$s: boot without LVM and without boot.log lines" "$ACT|$FS_STATE|$CALLS|$(cat "$D/fleet/boot.log" 2>/dev/null)" "boot|$s||"
done
scenario none u1 0 2 "$OLD_CMD" yes immediate
eq "no state: boot" "$ACT|$FS_STATE|$CALLS" "boot|none|"
printf 'garbage\n' >"$D/fleet/state.a"
ACT=$(fleet_initramfs_act "$D" 2>/dev/null | tail -n 1)
eq "unreadable state: boot, logged" "$ACT|$(grep -c 'no valid state copy' "$D/fleet/boot.log")" "boot|1"

# --- systemd/fleet-boot-good and systemd/fleet-upgrade-deadline --------------------------------
SYSD=$HERE/../../systemd
unit_env() { env FLEET_LIB="$LIB" FLEET_BOOT_DIR="$D" FLEET_NOW=1700000000 "$@"; }
newdir
TRIALS=3/4
set_state trial u2 1 2
TRIALS=0/0
fleet_state_write "$D"
unit_env FLEET_CMDLINE="root=x fleet.upgrade=u2" sh "$SYSD/fleet-boot-good" 2>/dev/null
fleet_state_read "$D"
eq "boot-good on the trial: bootcount 0 (trials kept), trial armed" \
    "$FS_STATE|$FS_BOOTCOUNT|$FS_TRIALS/$FS_MAX_TRIALS|$(test -f "$D/tryboot.flag" && echo armed)" "trial|0|3/4|armed"
rm -f "$D/tryboot.flag"
FS_BOOTCOUNT=1
fleet_state_write "$D"
unit_env FLEET_CMDLINE="root=x" sh "$SYSD/fleet-boot-good" 2>/dev/null
fleet_state_read "$D"
eq "boot-good off the trial: nothing changes" "$FS_BOOTCOUNT|$(test -f "$D/tryboot.flag" && echo armed)" "1|"
: >"$D/tryboot.flag"
: >"$LV/calls"
unit_env FLEET_UPTIME=119 FLEET_REBOOT="$TMP/fake-reboot" sh "$SYSD/fleet-upgrade-deadline" 2>/dev/null
fleet_state_read "$D"
eq "deadline not reached: state stays trial" "$FS_STATE|$(cat "$LV/calls")" "trial|"
unit_env FLEET_UPTIME=120 FLEET_REBOOT="$TMP/fake-reboot" sh "$SYSD/fleet-upgrade-deadline" 2>/dev/null
fleet_state_read "$D"
eq "deadline reached: rollback requested, disarmed, reboot" \
    "$FS_STATE|$FS_REASON|$(test -f "$D/tryboot.flag" && echo armed)|$(cat "$LV/calls")" \
    "rollback|deadline: not committed within 120 s||reboot"
: >"$LV/calls"
unit_env FLEET_UPTIME=999 FLEET_REBOOT="$TMP/fake-reboot" sh "$SYSD/fleet-upgrade-deadline" 2>/dev/null
eq "deadline with state=rollback: nothing more" "$(cat "$LV/calls")" ""

echo "fleet-bootstate: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
