/* sandbox-probe: one system call the agent (or a process it starts) makes, so that
 * systemd/test/probe-sandbox can run it under `systemd-run -p <directive>` and see whether
 * the directive blocks it. Prints "ok" or "<call>: <errno text>" and exits 0 / 1.
 * Built static by probe-sandbox (the guest has no compiler):
 *     cc -static -O1 -o sandbox-probe sandbox-probe.c
 * Usage: sandbox-probe adjtimex|mmap-wx|personality|rt|uts-hostname|setuid-chmod FILE|
 *        keyctl|unshare-mount|mount-tmpfs DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timex.h>
#include <unistd.h>

static int report(const char *call, int rc)
{
    if (rc == 0) {
        puts("ok");
        return 0;
    }
    printf("%s: %s\n", call, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        fputs("usage: sandbox-probe adjtimex|mmap-wx|personality|rt|uts-hostname|"
              "setuid-chmod FILE|keyctl|unshare-mount|mount-tmpfs DIR\n",
              stderr);
        return 2;
    }
    const char *t = argv[1];
    if (strcmp(t, "adjtimex") == 0) {
        /* What the time guard does: modes = 0 only reads the kernel's sync state. */
        struct timex tx;
        memset(&tx, 0, sizeof tx);
        int rc = adjtimex(&tx);
        if (rc < 0)
            return report("adjtimex(modes=0)", -1);
        printf("ok state=%d status=0x%x maxerror=%ld\n", rc, (unsigned)tx.status, tx.maxerror);
        return 0;
    }
    if (strcmp(t, "mmap-wx") == 0) {
        /* A JIT (node, java, luajit) in a container the agent started. */
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return report("mmap(PROT_WRITE|PROT_EXEC)", p == MAP_FAILED ? -1 : 0);
    }
    if (strcmp(t, "personality") == 0)
        return report("personality(PER_LINUX32)", personality(PER_LINUX32) < 0 ? -1 : 0);
    if (strcmp(t, "rt") == 0) {
        struct sched_param sp = {.sched_priority = 1};
        return report("sched_setscheduler(SCHED_FIFO)", sched_setscheduler(0, SCHED_FIFO, &sp));
    }
    if (strcmp(t, "uts-hostname") == 0) {
        /* What an OCI runtime does for every container: a new UTS namespace, sethostname. */
        if (unshare(CLONE_NEWUTS) < 0)
            return report("unshare(CLONE_NEWUTS)", -1);
        return report("sethostname", sethostname("probe", 5));
    }
    if (strcmp(t, "setuid-chmod") == 0 && argc > 2)
        /* What unpacking an image layer with /usr/bin/su or passwd in it does. */
        return report("chmod(04755)", chmod(argv[2], 04755));
    if (strcmp(t, "keyctl") == 0) {
        /* runc/crun join a new session keyring per container (KEYCTL_JOIN_SESSION_KEYRING). */
        long k = syscall(SYS_keyctl, 1, "probe");
        return report("keyctl(JOIN_SESSION_KEYRING)", k < 0 ? -1 : 0);
    }
    if (strcmp(t, "unshare-mount") == 0)
        return report("unshare(CLONE_NEWNS)", unshare(CLONE_NEWNS));
    if (strcmp(t, "mount-tmpfs") == 0 && argc > 2)
        return report("mount(tmpfs)", mount("probe", argv[2], "tmpfs", 0, "size=1m"));
    fprintf(stderr, "sandbox-probe: unknown probe %s\n", t);
    return 2;
}
