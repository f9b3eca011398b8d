// cairn-sandbox-exec: the last step before bwrap. It applies the rlimits,
// closes every inherited fd except stdin/stdout/stderr, the result fd (3)
// and the seccomp filter fd (4), then execs its arguments. Inherited fds that
// were not close-on-exec would otherwise reach the sandboxed program.
//
// usage: cairn-sandbox-exec <data> <nproc> <fsize> <nofile> -- /usr/bin/bwrap ...
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func fail(msg string, err error) {
	fmt.Fprintf(os.Stderr, "cairn-sandbox-exec: %s: %v\n", msg, err)
	os.Exit(125)
}

func limit(res int, v string) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		fail("bad limit "+v, err)
	}
	if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
		fail("setrlimit", err)
	}
}

const (
	rlimitNproc = 6
	rlimitCore  = 4
)

func main() {
	a := os.Args
	if len(a) < 7 || a[5] != "--" {
		fail("usage", fmt.Errorf("cairn-sandbox-exec <data> <nproc> <fsize> <nofile> -- cmd ..."))
	}
	limit(syscall.RLIMIT_DATA, a[1])
	limit(rlimitNproc, a[2])
	limit(syscall.RLIMIT_FSIZE, a[3])
	limit(syscall.RLIMIT_NOFILE, a[4])
	limit(rlimitCore, "0")
	// close_range(5, ~0U, 0): everything above the seccomp fd.
	if _, _, e := syscall.RawSyscall(436, 5, ^uintptr(0)>>32, 0); e != 0 {
		for fd := 5; fd < 65536; fd++ {
			syscall.Close(fd)
		}
	}
	if err := syscall.Exec(a[6], a[6:], os.Environ()); err != nil {
		fail("exec "+a[6], err)
	}
}
