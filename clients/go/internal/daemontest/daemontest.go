// Package daemontest starts a real optimd for tests: $OPTIMD_BIN on a free
// loopback port with the plugins of $OPTIMD_PLUGIN_DIR, as the other
// clients' tests do (tests/python/support.py).
package daemontest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Daemon is a running optimd.
type Daemon struct {
	URL string
	cmd *exec.Cmd
	log *syncBuffer
}

// Start starts a daemon with extra command-line arguments and stops it when
// the test ends; the test fails if the daemon does not exit 0 on SIGTERM.
// Without OPTIMD_BIN the test is skipped.
func Start(t testing.TB, extra ...string) *Daemon {
	t.Helper()
	bin := os.Getenv("OPTIMD_BIN")
	if bin == "" {
		t.Skip("OPTIMD_BIN is not set: these tests need a built daemon (run them through ctest, or set OPTIMD_BIN and OPTIMD_PLUGIN_DIR)")
	}
	pluginDir := os.Getenv("OPTIMD_PLUGIN_DIR")
	if pluginDir == "" {
		pluginDir = filepath.Join(filepath.Dir(bin), "plugins")
	}
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	args := append([]string{
		"--listen", "tcp://127.0.0.1:0",
		"--plugin-dir", pluginDir,
		"--state-dir", filepath.Join(dir, "state"),
		"--ready-file", ready,
	}, extra...)
	d := &Daemon{cmd: exec.Command(bin, args...), log: &syncBuffer{}}
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop(t, exited) })

	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(ready); err == nil {
			if url := strings.TrimSpace(string(b)); url != "" {
				d.URL = url
				return d
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("optimd exited during start-up (%v):\n%s", err, d.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("optimd not ready after 60 s:\n%s", d.log.String())
	return nil
}

func (d *Daemon) stop(t testing.TB, exited chan error) {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("optimd did not exit cleanly on SIGTERM (%v); its log:\n%s", err, d.log.String())
		}
	case <-time.After(60 * time.Second):
		_ = d.cmd.Process.Kill()
		<-exited
		t.Errorf("optimd still running 60 s after SIGTERM; its log:\n%s", d.log.String())
	}
}

// Log is what the daemon wrote so far.
func (d *Daemon) Log() string { return d.log.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
