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
 *   env, argv), opens the filter as fd 4, joins the memory cgroup and becomes a
 *   child subreaper; it keeps Cairn's uid, so it is never one of the processes
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
 *   {"exit": n, "signal": n, "max_rss_kb": n, "killed": b, "timed_out": b, "elapsed_ms": f}.
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
#include <sys/socket.h>
#include <sys/stat.h>
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

static void kill_all(void) {
  if (child > 0) kill(child, SIGKILL);
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
  if (nf < 13) fail("header", "too few fields");
  int nenv = (int)number(f[11]);
  if (12 + nenv >= nf) fail("header", "no command");
  char **envp = calloc((size_t)nenv + 1, sizeof *envp);
  for (int i = 0; i < nenv; i++) envp[i] = f[12 + i];
  char **argv = calloc((size_t)(nf - 12 - nenv) + 1, sizeof *argv);
  for (int i = 12 + nenv; i < nf; i++) argv[i - 12 - nenv] = f[i];
  f[nf] = NULL;

  unsigned long long timeout_ms = number(f[6]);
  own_uid = strcmp(f[5], "1") == 0;
  int armed = strcmp(f[8], "1") == 0;

  int seccomp = open(f[9], O_RDONLY | O_CLOEXEC);
  if (seccomp < 0) fail("seccomp filter", strerror(errno));
  if (strcmp(f[7], "-") != 0) {
    int fd = open(f[7], O_WRONLY | O_CLOEXEC);
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (fd < 0 || write(fd, pid, len) != len) fail("join cgroup", strerror(errno));
    close(fd);
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
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGPIPE, SIG_DFL);
    /* Out of the way first (a source may sit on another's target), then into place:
       dup2 clears close-on-exec on the targets; everything else is closed here. */
    int src[6] = {pin[0], pout[1], perr[1], pres[1], seccomp, armed ? block[0] : -1};
    for (int i = 0; i < 6; i++)
      if (src[i] >= 0 && (src[i] = fcntl(src[i], F_DUPFD, 100)) < 0) _exit(126);
    for (int i = 0; i < 6; i++)
      if (src[i] >= 0 && dup2(src[i], i) < 0) _exit(126);
    if (syscall(SYS_close_range, armed ? 6 : 5, ~0U, 0) != 0)
      for (int fd = armed ? 6 : 5; fd < 65536; fd++) close(fd);
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
  if (armed) close(block[0]);
  stdin_fd = pin[1];
  fcntl(stdin_fd, F_SETFL, O_NONBLOCK);
  fcntl(pout[0], F_SETFL, O_NONBLOCK);
  fcntl(perr[0], F_SETFL, O_NONBLOCK);
  fcntl(pres[0], F_SETFL, O_NONBLOCK);
  fcntl(conn, F_SETFL, O_NONBLOCK);

  int released = !armed, killed = 0, timed_out = 0, exited = 0, conn_open = 1, pending_frames = 1;
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
    int r = poll(p, 6, wait_ms);
    if (r < 0 && errno != EINTR) fail("poll", strerror(errno));
    if (released && !timed_out && !killed && now_ms() >= deadline) {
      timed_out = 1;
      kill_all();
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
  char rep[256];
  int len = snprintf(rep, sizeof rep,
                     "{\"exit\":%d,\"signal\":%d,\"max_rss_kb\":%ld,\"killed\":%s,\"timed_out\":%s,\"elapsed_ms\":%.3f}",
                     code, sig, max_rss, killed ? "true" : "false", timed_out ? "true" : "false", elapsed);
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
