/**
 * Our own seccomp filter, assembled as classic BPF (what `bwrap --seccomp FD`
 * loads). Denied: debugging other processes, mounts (old and new API),
 * namespaces, kernel keyrings, eBPF, perf, userfaultfd, io_uring, kexec and
 * modules, sockets other than AF_UNIX, and the x32 ABI. `clone3` answers
 * ENOSYS so runtimes fall back to `clone`, whose namespace flags we can
 * inspect (clone3 passes them in memory, out of BPF's reach).
 */

// x86_64 syscall numbers (asm/unistd_64.h)
const NR = {
  ptrace: 101,
  process_vm_readv: 310,
  process_vm_writev: 311,
  mount: 165,
  umount2: 166,
  pivot_root: 155,
  unshare: 272,
  setns: 308,
  keyctl: 250,
  add_key: 248,
  request_key: 249,
  bpf: 321,
  perf_event_open: 298,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  kexec_load: 246,
  kexec_file_load: 320,
  init_module: 175,
  finit_module: 313,
  delete_module: 176,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  mount_setattr: 442,
  acct: 163,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  syslog: 103,
  quotactl: 179,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  lookup_dcookie: 212,
  // System V shared memory outlives every mapping of it, where no watch can see it: refused.
  shmget: 29,
  shmat: 30,
  shmctl: 31,
  shmdt: 67,
  clone3: 435,
  clone: 56,
  socket: 41,
  socketpair: 53,
} as const;

export const DENIED_SYSCALLS = Object.keys(NR).filter(
  (n) => !['clone3', 'clone', 'socket', 'socketpair'].includes(n),
) as (keyof typeof NR)[];

const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;
const AF_UNIX = 1;
const CLONE_NS_FLAGS =
  0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;

const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;
const RET_KILL_PROCESS = 0x80000000;
const EPERM = 1;
const ENOSYS = 38;

// BPF opcodes
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;

type Target = 'next' | 'allow' | 'eperm' | 'enosys' | 'kill' | 'socket' | 'clone';
type Insn = { label?: Target; code: number; jt?: Target; jf?: Target; k: number };

const OFF_NR = 0;
const OFF_ARCH = 4;
const OFF_ARG0_LO = 16; // args[0], low 32 bits (little endian)

/**
 * The filter as bytes: an array of struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
 * `allowInet` is only for module downloads, where no user code runs.
 */
export function buildSeccompFilter(opts: { allowInet?: boolean } = {}): Buffer {
  if (process.arch !== 'x64') throw new Error(`the seccomp filter is built for x86_64, not ${process.arch}`);
  const prog: Insn[] = [
    { code: LD_W_ABS, k: OFF_ARCH },
    { code: JEQ_K, k: AUDIT_ARCH_X86_64, jt: 'next', jf: 'kill' },
    { code: LD_W_ABS, k: OFF_NR },
    { code: JGE_K, k: X32_SYSCALL_BIT, jt: 'eperm', jf: 'next' },
    ...DENIED_SYSCALLS.map((n): Insn => ({ code: JEQ_K, k: NR[n], jt: 'eperm', jf: 'next' })),
    { code: JEQ_K, k: NR.clone3, jt: 'enosys', jf: 'next' },
    { code: JEQ_K, k: NR.socket, jt: 'socket', jf: 'next' },
    { code: JEQ_K, k: NR.socketpair, jt: 'socket', jf: 'next' },
    { code: JEQ_K, k: NR.clone, jt: 'clone', jf: 'next' },
    { code: RET_K, k: RET_ALLOW },
    { label: 'socket', code: LD_W_ABS, k: OFF_ARG0_LO },
    { code: JEQ_K, k: AF_UNIX, jt: 'allow', jf: opts.allowInet ? 'allow' : 'eperm' },
    { label: 'clone', code: LD_W_ABS, k: OFF_ARG0_LO },
    { code: JSET_K, k: CLONE_NS_FLAGS, jt: 'eperm', jf: 'allow' },
    // BPF jumps only forward, so the shared returns come last.
    { label: 'allow', code: RET_K, k: RET_ALLOW },
    { label: 'eperm', code: RET_K, k: RET_ERRNO | EPERM },
    { label: 'enosys', code: RET_K, k: RET_ERRNO | ENOSYS },
    { label: 'kill', code: RET_K, k: RET_KILL_PROCESS },
  ];
  const at = new Map<Target, number>();
  prog.forEach((ins, i) => ins.label && at.set(ins.label, i));
  const rel = (i: number, t: Target | undefined): number => {
    if (t === undefined || t === 'next') return 0;
    const off = at.get(t)! - (i + 1);
    if (off < 0 || off > 255) throw new Error(`seccomp jump out of range: ${t}`);
    return off;
  };
  const buf = Buffer.alloc(prog.length * 8);
  prog.forEach((ins, i) => {
    buf.writeUInt16LE(ins.code, i * 8);
    buf.writeUInt8(rel(i, ins.jt), i * 8 + 2);
    buf.writeUInt8(rel(i, ins.jf), i * 8 + 3);
    buf.writeUInt32LE(ins.k >>> 0, i * 8 + 4);
  });
  return buf;
}
