// probe: one static binary that tries one attack per subcommand, for the sandbox security suite.
// It prints what happened; the tests decide whether containment held.
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func say(format string, a ...any) { fmt.Printf(format+"\n", a...) }

func main() {
	if len(os.Args) < 2 {
		say("usage: probe <attack> [args]")
		os.Exit(2)
	}
	arg := func(i int) string {
		if len(os.Args) > i {
			return os.Args[i]
		}
		return ""
	}
	switch os.Args[1] {
	case "result":
		f := os.NewFile(3, "result")
		_, err := f.Write([]byte(arg(2)))
		say("result write err=%v", err)
	case "tcp":
		c, err := net.DialTimeout("tcp", arg(2), 2*time.Second)
		if err == nil {
			c.Close()
		}
		say("tcp err=%v", err)
	case "udp":
		c, err := net.Dial("udp", arg(2))
		if err == nil {
			_, err = c.Write([]byte("x"))
			c.Close()
		}
		say("udp err=%v", err)
	case "dns":
		_, err := net.LookupHost(arg(2))
		say("dns err=%v", err)
	case "unix":
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err == nil {
			syscall.Close(fds[0])
			syscall.Close(fds[1])
		}
		say("unix err=%v", err)
	case "read":
		b, err := os.ReadFile(arg(2))
		say("read bytes=%d err=%v", len(b), err)
	case "ls":
		entries, err := os.ReadDir(arg(2))
		names := []string{}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		say("ls %s err=%v", strings.Join(names, ","), err)
	case "mark":
		// What an earlier run left in /tmp, then a mark of this run's own.
		entries, err := os.ReadDir("/tmp")
		names := []string{}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		werr := os.WriteFile("/tmp/mark", []byte("earlier run"), 0o644)
		say("mark saw=[%s] err=%v write=%v", strings.Join(names, ","), err, werr)
	case "write":
		err := os.WriteFile(arg(2), []byte("planted"), 0o644)
		say("write err=%v", err)
	case "fill":
		f, err := os.Create("/tmp/fill")
		n := 0
		buf := make([]byte, 1<<20)
		for err == nil {
			_, err = f.Write(buf)
			if err == nil {
				n++
			}
		}
		say("fill mb=%d err=%v", n, err)
	case "forkbomb":
		n := 0
		var err error
		for i := 0; i < 10000; i++ {
			cmd := exec.Command("/proc/self/exe", "sleep", "20000")
			if err = cmd.Start(); err != nil {
				break
			}
			n++
		}
		say("forkbomb started=%d err=%v", n, err)
	case "mem":
		var mb int
		fmt.Sscan(arg(2), &mb)
		blocks := [][]byte{}
		for i := 0; i < mb; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = 1
			}
			blocks = append(blocks, b)
		}
		say("mem allocated=%d", len(blocks))
	case "busy":
		x := 0
		for {
			x++
		}
	case "sleep":
		var ms int
		fmt.Sscan(arg(2), &ms)
		time.Sleep(time.Duration(ms) * time.Millisecond)
		say("slept")
	case "flood":
		line := strings.Repeat("x", 1023) + "\n"
		for {
			os.Stdout.WriteString(line)
		}
	case "ptrace":
		_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, 1, 0)
		say("ptrace errno=%d", e)
	case "unshare":
		err := syscall.Unshare(syscall.CLONE_NEWUSER)
		say("unshare err=%v", err)
	case "clonens":
		_, _, e := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.CLONE_NEWNET|syscall.SIGCHLD), 0, 0)
		say("clonens errno=%d", e)
	case "mount":
		err := syscall.Mount("tmpfs", "/tmp", "tmpfs", 0, "")
		say("mount err=%v", err)
	case "inet":
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err == nil {
			syscall.Close(fd)
		}
		say("inet err=%v", err)
	case "env":
		say("env %s", strings.Join(os.Environ(), ";"))
	case "environ1":
		b, err := os.ReadFile("/proc/1/environ")
		say("environ1 %q err=%v", string(b), err)
	case "cmdlines":
		// Every process's command line inside the sandbox, NULs shown as spaces.
		entries, _ := os.ReadDir("/proc")
		lines := []string{}
		for _, e := range entries {
			if _, err := fmt.Sscan(e.Name(), new(int)); err != nil {
				continue
			}
			b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			lines = append(lines, e.Name()+":"+strings.ReplaceAll(string(b), "\x00", " "))
		}
		say("cmdlines %s", strings.Join(lines, "|"))
	case "sysvshm":
		_, _, errno := syscall.Syscall(syscall.SYS_SHMGET, 0, 64<<20, 01000|0600)
		say("sysvshm err=%v", errno)
	case "fds":
		entries, _ := os.ReadDir("/proc/self/fd")
		names := []string{}
		for _, e := range entries {
			t, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
			names = append(names, e.Name()+"="+t)
		}
		say("fds %s", strings.Join(names, ","))
	case "procs":
		entries, _ := os.ReadDir("/proc")
		pids := []string{}
		for _, e := range entries {
			if _, err := fmt.Sscan(e.Name(), new(int)); err == nil {
				pids = append(pids, e.Name())
			}
		}
		say("procs %s", strings.Join(pids, ","))
	case "orphan":
		cmd := exec.Command("/proc/self/exe", "sleep", "60000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err := cmd.Start()
		say("orphan pid=%d err=%v", cmd.Process.Pid, err)
		os.Stdout.Sync()
		os.Exit(0)
	case "id":
		say("id uid=%d euid=%d gid=%d", os.Getuid(), os.Geteuid(), os.Getgid())
	default:
		say("unknown attack %s", os.Args[1])
		os.Exit(2)
	}
}
