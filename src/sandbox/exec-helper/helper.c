/*
 * cairn-sandbox-exec: the spawn server and the parent of every sandbox.
 *
 * `cairn-sandbox-exec --serve <socket>` is started once per Cairn process. It
 * listens on a unix socket in a directory only Cairn's uid can enter, accepts
 * connections from that uid only, and forks one child per connection. It dies
 * when Cairn does (its stdin closes, or the parent-death signal).
 *
 * Why a server: Node can only start a process by forking its whole (large)
 * address space, which costs milliseconds of the event loop per run and slows
 * the loop afterwards (copy-on-write faults); this process is tiny, so its
 * fork is cheap, and Node only opens a socket.
 *
 * Each child serves one run:
 * - reads the run's header (uid, limits, cgroup, seccomp filter, armed, cwd,
 *   env, argv), opens the filter as fd 4 and becomes a child subreaper (its
 *   forked program side joins the run's memory cgroup, the helper does not); it keeps Cairn's uid, so it is never one of the processes
 *   of the sandbox uid that it kills;
 * - starts argv[0] (bwrap) as the sandbox uid, with the rlimits, with
 *   stdin/stdout/stderr/result (fd 3) pipes and the filter on fd 4 (and, armed,
 *   bwrap's block fd on 5) and no other fd, in an empty environment unless the
 *   header gives one;
 * - relays: input frames from the socket to the program's stdin; its stdout,
 *   stderr and result back as frames, as they arrive;
 * - enforces the wall-clock limit with its own timer, and kills on a kill frame
 *   or when the socket closes;
 * - once bwrap exits, kills whatever is left of the sandbox uid (when that uid
 *   is dedicated to this sandbox: kill(-1) from a short-lived child running as
 *   that uid), reaps every descendant, drains the pipes,
 *   and sends one report frame:
 *   {"exit": n, "signal": n, "max_rss_kb": n, "killed": b, "timed_out": b,
 *    "memory_exceeded": b, "watched_peak_kb": n, "elapsed_ms": f}.
 *
 * Memory watch (where no memory cgroup holds the sandbox): every 10 ms the
 * child sums, over every process of the sandbox (the tree under bwrap, found
 * through /proc/<pid>/task/<tid>/children), RssAnon + RssShmem (so shared
 * anonymous memory and mapped memfds count, which RLIMIT_DATA misses), the
 * size of memfds they hold open, and the space used on the sandbox's tmpfs
 * mounts (/tmp, /dev/shm). At the limit it kills the sandbox and reports
 * memory_exceeded. Shared pages are counted once per process that maps them:
 * the sum can only overstate what the sandbox holds, never understate it.
 *
 * Host paths stay out of the sandbox's sight: bwrap's options (binds with host
 * paths, limits) travel on fd 6 (`bwrap --args 6`, which bwrap reads and
 * closes), so /proc/1/cmdline inside shows only `bwrap --args 6 -- <program>`.
 *
 * Armed: bwrap is given `--block-fd 5` (by the caller), so namespaces, mounts
 * and the seccomp filter are ready while no code of the run has started. The
 * go frame releases it and starts the timer: the run's clock and `elapsed_ms`
 * count from the moment its input was handed over.
 *
 * Frames, both ways: one type byte, a little-endian u32 length, the bytes.
 *   to the child:   'h' header (NUL-separated fields), 'i' stdin bytes,
 *                   'I' stdin end, 'g' go, 'k' kill
 *   from the child: 'o' stdout, 'e' stderr, 'r' result, 'R' report (last)
 * Header fields: uid (or "-"), data, nproc, fsize, nofile, own-uid (0|1),
 * timeout-ms, cgroup.procs (or "-"), armed (0|1), seccomp file, cwd (or "-"),
 * memory-watch bytes (0: off), fd-args count (argv[1..n] go on fd 6),
 * env count, env..., argv...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FIELDS 4096
#define MAX_HEADER (4 << 20)

static int conn = -1;

static void fail(const char *what, const char *detail) {
  dprintf(2, "cairn-sandbox-exec: %s: %s\n", what, detail);
  _exit(125);
}

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {fd, POLLOUT, 0};
        poll(&pf, 1, -1);
        continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void send_frame(char type, const void *data, uint32_t n) {
  unsigned char h[5] = {(unsigned char)type, n & 255, (n >> 8) & 255, (n >> 16) & 255, n >> 24};
  if (conn < 0) return;
  if (write_all(conn, h, 5) != 0 || write_all(conn, data, n) != 0) conn = -1; /* Cairn is gone */
}

static unsigned long long number(const char *s) {
  char *end;
  errno = 0;
  unsigned long long n = strtoull(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0') fail("bad number", s);
  return n;
}

static void limit(int res, unsigned long long n) {
  struct rlimit r = {n, n};
  if (setrlimit(res, &r) != 0) fail("setrlimit", strerror(errno));
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

static pid_t child;
static int own_uid;

static int has_uid;
static uid_t sandbox_uid;

/* Drops to the sandbox uid (the program's side, and the killer's). */
static int become_sandbox_uid(void) {
  if (!has_uid) return 0;
  if (setgroups(0, NULL) != 0 && geteuid() == 0) return -1;
  return setgid(sandbox_uid) == 0 && setuid(sandbox_uid) == 0 ? 0 : -1;
}

/* cgroup v2: the run's cgroup.kill, which kills every process in it at once ("" when none). */
static char cgroup_kill[4096];

static void kill_all(void) {
  if (child > 0) kill(child, SIGKILL);
  if (cgroup_kill[0]) {
    int fd = open(cgroup_kill, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (write(fd, "1", 1) != 1) { /* fall through to kill(-1) */ }
      close(fd);
    }
  }
  if (!own_uid) return;
  /* Every process of this dedicated uid: kill(-1) as that uid, from a short-lived
     child (this process keeps Cairn's uid, so it is never one of them). */
  pid_t k = fork();
  if (k == 0) {
    if (become_sandbox_uid() == 0) kill(-1, SIGKILL);
    _exit(0);
  }
  if (k > 0) waitpid(k, NULL, 0);
}

/* ---- The memory watch ---- */

#define WATCH_MS 10
#define MAX_TREE 1024
#define TMPFS_MAGIC 0x01021994

/* RssAnon + RssShmem of one process, in KiB (0 when it is gone). */
static long long rss_kb(pid_t pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  long long kb = 0;
  for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    if (strncmp(l, "RssAnon:", 8) == 0) kb += strtoll(l + 8, NULL, 10);
    else if (strncmp(l, "RssShmem:", 9) == 0) kb += strtoll(l + 9, NULL, 10);
  }
  return kb;
}

/* Bytes held by the memfds a process has open (mapped or not). */
static long long memfd_bytes(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d) return 0;
  long long total = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char fdp[384], link[128];
    snprintf(fdp, sizeof fdp, "%s/%s", path, e->d_name);
    ssize_t n = readlink(fdp, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = '\0';
    if (strncmp(link, "/memfd:", 7) != 0) continue;
    struct stat st;
    if (stat(fdp, &st) == 0) total += (long long)st.st_blocks * 512;
  }
  closedir(d);
  return total;
}

/* Appends the children of every thread of `pid` to `out`. */
static int children_of(pid_t pid, pid_t *out, int n) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  if (!d) return n;
  struct dirent *e;
  while ((e = readdir(d)) && n < MAX_TREE) {
    if (e->d_name[0] == '.') continue;
    char cp[384], buf[4096];
    snprintf(cp, sizeof cp, "%s/%s/children", path, e->d_name);
    int fd = open(cp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0) continue;
    buf[r] = '\0';
    for (char *p = buf; *p && n < MAX_TREE;) {
      char *end;
      long c = strtol(p, &end, 10);
      if (end == p) break;
      out[n++] = (pid_t)c;
      p = end;
      while (*p == ' ') p++;
    }
  }
  closedir(d);
  return n;
}

/* Space used on a tmpfs mounted at `dir` inside the sandbox that `pid` lives in. */
static long long tmpfs_bytes(pid_t pid, const char *dir, const struct stat *host_root) {
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
  struct stat st;
  /* Not yet inside its own root (bwrap still setting up): nothing of the sandbox to count. */
  if (stat(path, &st) != 0 || (st.st_dev == host_root->st_dev && st.st_ino == host_root->st_ino)) return 0;
  snprintf(path, sizeof path, "/proc/%d/root%s", (int)pid, dir);
  struct statfs fs;
  if (statfs(path, &fs) != 0 || fs.f_type != TMPFS_MAGIC) return 0;
  return (long long)(fs.f_blocks - fs.f_bfree) * (long long)fs.f_bsize;
}

/* What the sandbox under `root` holds now, in bytes. */
static long long sandbox_bytes(pid_t root) {
  static pid_t tree[MAX_TREE];
  static struct stat host_root;
  static int have_root;
  if (!have_root) have_root = stat("/", &host_root) == 0;
  int n = 1, i = 0;
  tree[0] = root;
  long long total = 0;
  pid_t inner = 0; /* a process inside the sandbox's mount namespace */
  while (i < n) {
    pid_t p = tree[i++];
    total += rss_kb(p) * 1024 + memfd_bytes(p);
    if (i > 1 && !inner) inner = p;
    n = children_of(p, tree, n);
  }
  if (inner && have_root) total += tmpfs_bytes(inner, "/tmp", &host_root) + tmpfs_bytes(inner, "/dev/shm", &host_root);
  return total;
}

/* Incoming frames from Cairn, parsed as bytes arrive. */
static unsigned char *in_buf;
static size_t in_len, in_cap;

static void in_append(const void *d, size_t n) {
  if (in_len + n > in_cap) {
    in_cap = (in_len + n) * 2;
    in_buf = realloc(in_buf, in_cap);
    if (!in_buf) fail("realloc", "out of memory");
  }
  memcpy(in_buf + in_len, d, n);
  in_len += n;
}

/* Returns 1 and the frame when a whole one is buffered; the caller consumes it. */
static int next_frame(char *type, unsigned char **data, uint32_t *n) {
  if (in_len < 5) return 0;
  uint32_t len = in_buf[1] | (in_buf[2] << 8) | (in_buf[3] << 16) | ((uint32_t)in_buf[4] << 24);
  if (len > MAX_HEADER * 64) fail("frame", "too large");
  if (in_len < 5 + (size_t)len) return 0;
  *type = (char)in_buf[0];
  *data = in_buf + 5;
  *n = len;
  return 1;
}

static void consume(uint32_t n) {
  memmove(in_buf, in_buf + 5 + n, in_len - 5 - n);
  in_len -= 5 + n;
}

/* Stdin bytes waiting for the program to read them. */
static unsigned char *out_pending;
static size_t out_len, out_off;
static int stdin_fd = -1, stdin_ending;

static void queue_stdin(const unsigned char *d, uint32_t n) {
  out_pending = realloc(out_pending, out_len + n + 1);
  if (!out_pending) fail("realloc", "out of memory");
  memcpy(out_pending + out_len, d, n);
  out_len += n;
}

static void flush_stdin(void) {
  while (stdin_fd >= 0 && out_off < out_len) {
    ssize_t w = write(stdin_fd, out_pending + out_off, out_len - out_off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      out_off = out_len; /* the program closed its stdin: drop the rest */
      break;
    }
    out_off += (size_t)w;
  }
  if (stdin_fd >= 0 && out_off >= out_len && stdin_ending) {
    close(stdin_fd);
    stdin_fd = -1;
  }
}

/* Reads what a pipe holds now and relays it; returns 0 at EOF. */
static int relay(int fd, char type) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r > 0) {
      send_frame(type, buf, (uint32_t)r);
      if (r < (ssize_t)sizeof buf) return 1;
      continue;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    return errno == EAGAIN ? 1 : 0;
  }
}

static void serve_one(void) {
  struct sigaction dfl = {0};
  dfl.sa_handler = SIG_DFL; /* and no SA_NOCLDWAIT: this process reaps its own */
  sigaction(SIGCHLD, &dfl, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* The header. */
  char type;
  unsigned char *data;
  uint32_t n;
  while (!next_frame(&type, &data, &n)) {
    char buf[65536];
    ssize_t r = read(conn, buf, sizeof buf);
    if (r <= 0) _exit(0);
    in_append(buf, (size_t)r);
    if (in_len > MAX_HEADER) fail("header", "too large");
  }
  if (type != 'h' || n == 0 || data[n - 1] != '\0') fail("header", "malformed");
  char *hdr = malloc(n);
  memcpy(hdr, data, n);
  consume(n);
  char *f[MAX_FIELDS + 1];
  int nf = 0;
  for (char *p = hdr; p < hdr + n && nf < MAX_FIELDS; p += strlen(p) + 1) f[nf++] = p;
  if (nf < 15) fail("header", "too few fields");
  unsigned long long watch_bytes = number(f[11]);
  int nfdargs = (int)number(f[12]);
  int nenv = (int)number(f[13]);
  if (14 + nenv >= nf) fail("header", "no command");
  char **envp = calloc((size_t)nenv + 1, sizeof *envp);
  for (int i = 0; i < nenv; i++) envp[i] = f[14 + i];
  int nargv = nf - 14 - nenv;
  if (nfdargs < 0 || nfdargs >= nargv) fail("header", "bad fd-args count");
  /* argv[1..nfdargs] go on fd 6 (NUL-separated), the rest stays on the command line. */
  int argsfd = -1;
  char **argv = calloc((size_t)nargv + 3, sizeof *argv);
  argv[0] = f[14 + nenv];
  int na = 1;
  if (nfdargs > 0) {
    argsfd = memfd_create("cairn-args", MFD_CLOEXEC);
    if (argsfd < 0) fail("memfd_create", strerror(errno));
    for (int i = 1; i <= nfdargs; i++)
      if (write_all(argsfd, f[14 + nenv + i], strlen(f[14 + nenv + i]) + 1) != 0) fail("args", strerror(errno));
    if (lseek(argsfd, 0, SEEK_SET) != 0) fail("args", strerror(errno));
    argv[na++] = "--args";
    argv[na++] = "6";
  }
  for (int i = 1 + nfdargs; i < nargv; i++) argv[na++] = f[14 + nenv + i];
  argv[na] = NULL;
  f[nf] = NULL;

  unsigned long long timeout_ms = number(f[6]);
  own_uid = strcmp(f[5], "1") == 0;
  int armed = strcmp(f[8], "1") == 0;

  int seccomp = open(f[9], O_RDONLY | O_CLOEXEC);
  if (seccomp < 0) fail("seccomp filter", strerror(errno));
  /* The program's side joins the run's cgroup (the helper stays outside it, so cgroup.kill spares it). */
  int cgroup_procs = -1;
  if (strcmp(f[7], "-") != 0) {
    cgroup_procs = open(f[7], O_WRONLY | O_CLOEXEC);
    if (cgroup_procs < 0) fail("join cgroup", strerror(errno));
    /* cgroup v2 has cgroup.kill beside cgroup.procs. */
    const char *slash = strrchr(f[7], '/');
    if (slash && (size_t)(slash - f[7]) + 13 < sizeof cgroup_kill) {
      memcpy(cgroup_kill, f[7], (size_t)(slash - f[7]));
      strcpy(cgroup_kill + (slash - f[7]), "/cgroup.kill");
      if (access(cgroup_kill, W_OK) != 0) cgroup_kill[0] = '\0';
    }
  }
  has_uid = strcmp(f[0], "-") != 0;
  if (has_uid) sandbox_uid = (uid_t)number(f[0]);
  unsigned long long lim[4] = {number(f[1]), number(f[2]), number(f[3]), number(f[4])};
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) fail("prctl subreaper", strerror(errno));

  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, &old);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) fail("signalfd", strerror(errno));

  int pin[2], pout[2], perr[2], pres[2], block[2] = {-1, -1};
  if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC) || pipe2(pres, O_CLOEXEC))
    fail("pipe", strerror(errno));
  if (armed && pipe2(block, O_CLOEXEC) != 0) fail("pipe", strerror(errno));

  double start = now_ms();
  child = fork();
  if (child < 0) fail("fork", strerror(errno));
  if (child == 0) {
    if (cgroup_procs >= 0) {
      char pid[32];
      int len = snprintf(pid, sizeof pid, "%d", (int)getpid());
      if (write(cgroup_procs, pid, len) != len) fail("join cgroup", strerror(errno));
      close(cgroup_procs);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGPIPE, SIG_DFL);
    /* Out of the way first (a source may sit on another's target), then into place:
       dup2 clears close-on-exec on the targets; everything else is closed here. */
    int src[7] = {pin[0], pout[1], perr[1], pres[1], seccomp, armed ? block[0] : -1, argsfd};
    for (int i = 0; i < 7; i++)
      if (src[i] >= 0 && (src[i] = fcntl(src[i], F_DUPFD, 100)) < 0) _exit(126);
    for (int i = 0; i < 7; i++) {
      if (src[i] >= 0 && dup2(src[i], i) < 0) _exit(126);
      if (src[i] < 0 && i > 4) close(i);
    }
    if (syscall(SYS_close_range, 7, ~0U, 0) != 0)
      for (int fd = 7; fd < 65536; fd++) close(fd);
    if (strcmp(f[10], "-") != 0 && chdir(f[10]) != 0) _exit(126);
    /* The program's side only: its uid and limits (this process stays Cairn's). */
    if (become_sandbox_uid() != 0) fail("setuid", strerror(errno));
    limit(RLIMIT_DATA, lim[0]);
    limit(RLIMIT_NPROC, lim[1]);
    limit(RLIMIT_FSIZE, lim[2]);
    limit(RLIMIT_NOFILE, lim[3]);
    limit(RLIMIT_CORE, 0);
    execve(argv[0], argv, envp);
    dprintf(2, "cairn-sandbox-exec: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(pin[0]);
  close(pout[1]);
  close(perr[1]);
  close(pres[1]);
  close(seccomp);
  if (cgroup_procs >= 0) close(cgroup_procs);
  if (argsfd >= 0) close(argsfd);
  if (armed) close(block[0]);
  stdin_fd = pin[1];
  fcntl(stdin_fd, F_SETFL, O_NONBLOCK);
  fcntl(pout[0], F_SETFL, O_NONBLOCK);
  fcntl(perr[0], F_SETFL, O_NONBLOCK);
  fcntl(pres[0], F_SETFL, O_NONBLOCK);
  fcntl(conn, F_SETFL, O_NONBLOCK);

  int released = !armed, killed = 0, timed_out = 0, exited = 0, conn_open = 1, pending_frames = 1;
  int mem_exceeded = 0;
  long long watched_peak = 0;
  double next_watch = now_ms() + WATCH_MS;
  int outs[3] = {pout[0], perr[0], pres[0]};
  const char types[3] = {'o', 'e', 'r'};
  int status = 0;
  long max_rss = 0;
  double deadline = start + (double)timeout_ms;
  while (!exited) {
    /* Frames read last turn (the first ones may have come with the header). */
    while (pending_frames && next_frame(&type, &data, &n)) {
      if (type == 'i') queue_stdin(data, n);
      else if (type == 'I') stdin_ending = 1;
      else if (type == 'g' && !released) {
        /* The run starts now: its clock, then its code. */
        start = now_ms();
        deadline = start + (double)timeout_ms;
        released = 1;
        if (write(block[1], "g", 1) != 1) kill_all();
        close(block[1]);
      } else if (type == 'k') {
        killed = 1;
        released = 1;
        kill_all();
      }
      consume(n);
    }
    pending_frames = 0;
    flush_stdin();
    struct pollfd p[6] = {
        {sfd, POLLIN, 0},
        {conn_open ? conn : -1, POLLIN, 0},
        {(stdin_fd >= 0 && out_off < out_len) ? stdin_fd : -1, POLLOUT, 0},
        {outs[0], POLLIN, 0},
        {outs[1], POLLIN, 0},
        {outs[2], POLLIN, 0},
    };
    int wait_ms = -1;
    if (released && !timed_out && !killed) {
      double left = deadline - now_ms();
      wait_ms = left <= 0 ? 0 : (int)left + 1;
    }
    if (watch_bytes && !killed && !timed_out) {
      double left = next_watch - now_ms();
      int w = left <= 0 ? 0 : (int)left + 1;
      if (wait_ms < 0 || w < wait_ms) wait_ms = w;
    }
    int r = poll(p, 6, wait_ms);
    if (r < 0 && errno != EINTR) fail("poll", strerror(errno));
    if (released && !timed_out && !killed && now_ms() >= deadline) {
      timed_out = 1;
      kill_all();
    }
    if (watch_bytes && !killed && !timed_out && now_ms() >= next_watch) {
      long long held = sandbox_bytes(child);
      if (held > watched_peak) watched_peak = held;
      if (held > (long long)watch_bytes) {
        mem_exceeded = 1;
        killed = 1;
        released = 1;
        kill_all();
      }
      next_watch = now_ms() + WATCH_MS;
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      ssize_t got = read(conn, buf, sizeof buf);
      if (got > 0) in_append(buf, (size_t)got);
      else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        conn_open = 0; /* Cairn is gone, or gave up on this run */
        if (!exited) {
          killed = 1;
          released = 1;
          kill_all();
        }
      }
      pending_frames = 1;
    }
    if (p[2].revents) flush_stdin();
    for (int i = 0; i < 3; i++)
      if (outs[i] >= 0 && (p[3 + i].revents & (POLLIN | POLLHUP | POLLERR)) && !relay(outs[i], types[i])) {
        close(outs[i]);
        outs[i] = -1;
      }
    if (p[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo != SIGCHLD) {
          killed = 1;
          released = 1;
          kill_all();
        }
      }
      for (;;) {
        struct rusage ru;
        int st;
        pid_t w = wait4(-1, &st, WNOHANG, &ru);
        if (w <= 0) break;
        if (ru.ru_maxrss > max_rss) max_rss = ru.ru_maxrss;
        if (w == child) {
          status = st;
          exited = 1;
        }
      }
    }
  }
  double elapsed = now_ms() - start;
  kill_all();
  for (;;) {
    struct rusage ru;
    pid_t w = wait4(-1, NULL, 0, &ru);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (ru.ru_maxrss > max_rss) max_rss = ru.ru_maxrss;
  }
  /* Every writer is dead: what the pipes still hold is all there is (a writer that
     escaped, possible only without a sandbox, gets 200 ms). */
  for (int i = 0; i < 3; i++)
    while (outs[i] >= 0) {
      struct pollfd pf = {outs[i], POLLIN, 0};
      if (poll(&pf, 1, 200) <= 0 || !relay(outs[i], types[i])) {
        close(outs[i]);
        outs[i] = -1;
      }
    }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  char rep[320];
  int len = snprintf(rep, sizeof rep,
                     "{\"exit\":%d,\"signal\":%d,\"max_rss_kb\":%ld,\"killed\":%s,\"timed_out\":%s,"
                     "\"memory_exceeded\":%s,\"watched_peak_kb\":%lld,\"elapsed_ms\":%.3f}",
                     code, sig, max_rss, killed ? "true" : "false", timed_out ? "true" : "false",
                     mem_exceeded ? "true" : "false", watched_peak / 1024, elapsed);
  if (conn >= 0) fcntl(conn, F_SETFL, 0);
  send_frame('R', rep, (uint32_t)len);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc != 3 || strcmp(argv[1], "--serve") != 0) fail("usage", "cairn-sandbox-exec --serve <socket>");
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(0);
  struct sigaction sa = {0};
  sa.sa_handler = SIG_IGN;
  sa.sa_flags = SA_NOCLDWAIT; /* children are reaped by the kernel */
  sigaction(SIGCHLD, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {0};
  addr.sun_family = AF_UNIX;
  if (strlen(argv[2]) >= sizeof addr.sun_path) fail("socket path", "too long");
  strcpy(addr.sun_path, argv[2]);
  unlink(argv[2]);
  if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || chmod(argv[2], 0600) != 0 ||
      listen(ls, 256) != 0)
    fail("listen", strerror(errno));
  if (write(1, "ready\n", 6) != 6) _exit(1);
  for (;;) {
    struct pollfd p[2] = {{ls, POLLIN, 0}, {0, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fail("poll", strerror(errno));
    }
    if (p[1].revents) _exit(0); /* Cairn closed our stdin: it is gone */
    if (!(p[0].revents & POLLIN)) continue;
    int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != getuid()) {
      close(c);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(ls);
      int devnull = open("/dev/null", O_RDWR);
      dup2(devnull, 0); /* not Cairn's stdin: only the server watches it */
      if (devnull > 2) close(devnull);
      conn = c;
      prctl(PR_SET_PDEATHSIG, 0);
      serve_one();
    }
    close(c);
  }
}
