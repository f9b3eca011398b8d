// cairn-sandbox-exec: the parent of every sandbox. It applies the rlimits,
// closes every inherited fd except 0-2, the result fd (3), the seccomp filter
// fd (4) and its report fd (5), then becomes a child subreaper and starts bwrap
// with fds 0-4 only. On SIGTERM, or once bwrap exits, it kills whatever is
// left of the sandbox uid (only when that uid is dedicated to this sandbox),
// reaps every descendant (so no zombie lingers and counts toward
// RLIMIT_NPROC), and writes one JSON line on fd 5:
// {"exit": n, "signal": n, "max_rss_kb": n, "timed_out": b, "elapsed_ms": f}.
// The wall-clock limit is enforced here, by a timer of its own, so a busy
// parent event loop cannot delay the kill.
//
// When a cgroup.procs path is given (not "-"), it first moves itself into that
// memory cgroup, so the whole sandbox is accounted and limited there.
//
// usage: cairn-sandbox-exec <data> <nproc> <fsize> <nofile> <own-uid:0|1> <timeout-ms> <cgroup.procs|-> -- /usr/bin/bwrap ...
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
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
	rlimitNproc         = 6
	rlimitCore          = 4
	sysCloseRange       = 436
	prSetChildSubreaper = 36
)

type report struct {
	Exit      int     `json:"exit"`
	Signal    int     `json:"signal"`
	MaxRSSKB  int64   `json:"max_rss_kb"`
	Killed    bool    `json:"killed"`
	TimedOut  bool    `json:"timed_out"`
	ElapsedMS float64 `json:"elapsed_ms"`
}

func main() {
	a := os.Args
	if len(a) < 10 || a[8] != "--" {
		fail("usage", fmt.Errorf("cairn-sandbox-exec <data> <nproc> <fsize> <nofile> <own-uid> <timeout-ms> <cgroup.procs|-> -- cmd ..."))
	}

	timeoutMS, err := strconv.ParseInt(a[6], 10, 64)
	if err != nil {
		fail("bad timeout "+a[6], err)
	}
	limit(syscall.RLIMIT_DATA, a[1])
	limit(rlimitNproc, a[2])
	limit(syscall.RLIMIT_FSIZE, a[3])
	limit(syscall.RLIMIT_NOFILE, a[4])
	limit(rlimitCore, "0")
	ownUID := a[5] == "1"
	if _, _, e := syscall.RawSyscall(sysCloseRange, 6, ^uintptr(0)>>32, 0); e != 0 {
		for fd := 6; fd < 65536; fd++ {
			syscall.Close(fd)
		}
	}
	// Raw syscalls: os.* file calls would start Go's netpoller, whose fd must not
	// exist before close_range above (it would be closed under the runtime's feet).
	if a[7] != "-" {
		fd, err := syscall.Open(a[7], syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
		if err == nil {
			_, err = syscall.Write(fd, []byte(strconv.Itoa(os.Getpid())))
			syscall.Close(fd)
		}
		if err != nil {
			fail("join cgroup "+a[7], err)
		}
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		fail("prctl subreaper", e)
	}
	out := os.NewFile(5, "report")
	syscall.CloseOnExec(5)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	start := time.Now()
	pid, err := syscall.ForkExec(a[9], a[9:], &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2, 3, 4}})
	if err != nil {
		fail("exec "+a[9], err)
	}
	syscall.Close(4)
	killAll := func() {
		syscall.Kill(pid, syscall.SIGKILL)
		if ownUID {
			// Every process of this dedicated uid (kill(-1) spares the caller).
			syscall.Kill(-1, syscall.SIGKILL)
		}
	}
	r := report{}
	var mu sync.Mutex
	timer := time.AfterFunc(time.Duration(timeoutMS)*time.Millisecond, func() {
		mu.Lock()
		r.TimedOut = true
		mu.Unlock()
		killAll()
	})
	go func() {
		<-sigs
		mu.Lock()
		r.Killed = true
		mu.Unlock()
		killAll()
	}()
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err := syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			break
		}
	}
	timer.Stop()
	mu.Lock()
	r.ElapsedMS = float64(time.Since(start).Microseconds()) / 1000
	r.MaxRSSKB = ru.Maxrss
	if ws.Signaled() {
		r.Signal = int(ws.Signal())
		r.Exit = -1
	} else {
		r.Exit = ws.ExitStatus()
	}
	killAll()
	for {
		var ru2 syscall.Rusage
		_, err := syscall.Wait4(-1, nil, 0, &ru2)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break
		}
		if ru2.Maxrss > r.MaxRSSKB {
			r.MaxRSSKB = ru2.Maxrss
		}
	}
	b, _ := json.Marshal(r)
	mu.Unlock()
	out.Write(append(b, '\n'))
	os.Exit(0)
}
