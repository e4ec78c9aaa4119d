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
	// exited holds the process's end once it came: whoever takes the value
	// puts it back, so WaitExit and the cleanup can both read it.
	exited chan error
}

// Start starts a daemon with extra command-line arguments and stops it when
// the test ends; the test fails if the daemon does not exit 0 on SIGTERM.
// Without OPTIMD_BIN the test is skipped.
func Start(t testing.TB, extra ...string) *Daemon {
	t.Helper()
	return StartListen(t, "tcp://127.0.0.1:0", extra...)
}

// StartListen is Start with the daemon listening on listen (for example
// tls+tcp://127.0.0.1:0, with the --tls-* flags in extra). The ready file
// names the first --listen address, so this one comes first.
func StartListen(t testing.TB, listen string, extra ...string) *Daemon {
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
		"--listen", listen,
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
	d.exited = exited
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

// WaitExit waits up to timeout for the daemon to exit by itself (after a
// shutdown request): exited is false if it still runs, else err is how it
// ended (nil: status 0). The cleanup then finds it gone and checks the
// same end.
func (d *Daemon) WaitExit(timeout time.Duration) (exited bool, err error) {
	select {
	case err = <-d.exited:
		d.exited <- err
		return true, err
	case <-time.After(timeout):
		return false, nil
	}
}

func (d *Daemon) stop(t testing.TB, exited chan error) {
	// Fails harmlessly on a daemon that already exited.
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

// PKI is a throw-away set of certificates in PEM files: a CA, a server
// certificate for 127.0.0.1 and localhost signed by it, a client
// certificate signed by it, and a client certificate signed by another CA
// (RogueCA).
type PKI struct {
	CA, RogueCA                     string
	ServerCert, ServerKey           string
	ClientCert, ClientKey           string
	RogueClientCert, RogueClientKey string
}

// MakePKI makes a PKI with openssl in a temporary directory of the test.
func MakePKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	openssl := func(args ...string) {
		t.Helper()
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	for _, ca := range []string{"ca", "rogue_ca"} {
		openssl(append(append([]string{"req", "-x509"}, ec...), "-keyout", p(ca+".key"), "-out", p(ca+".pem"),
			"-days", "2", "-subj", "/CN=optimd go test "+ca)...)
	}
	if err := os.WriteFile(p("san.cnf"), []byte("subjectAltName=IP:127.0.0.1,DNS:localhost\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, ca, cn string }{
		{"server", "ca", "localhost"}, {"client", "ca", "client"}, {"rogue", "rogue_ca", "rogue"},
	} {
		openssl(append(append([]string{"req", "-new"}, ec...), "-keyout", p(c.name+".key"), "-out", p(c.name+".csr"),
			"-subj", "/CN="+c.cn)...)
		args := []string{"x509", "-req", "-in", p(c.name + ".csr"), "-CA", p(c.ca + ".pem"), "-CAkey", p(c.ca + ".key"),
			"-CAcreateserial", "-out", p(c.name + ".pem"), "-days", "2"}
		if c.name == "server" {
			args = append(args, "-extfile", p("san.cnf"))
		}
		openssl(args...)
	}
	return &PKI{
		CA: p("ca.pem"), RogueCA: p("rogue_ca.pem"),
		ServerCert: p("server.pem"), ServerKey: p("server.key"),
		ClientCert: p("client.pem"), ClientKey: p("client.key"),
		RogueClientCert: p("rogue.pem"), RogueClientKey: p("rogue.key"),
	}
}

// StartTLS starts a daemon listening on tls+tcp:// with pki's server
// certificate, requiring client certificates signed by pki.CA.
func StartTLS(t testing.TB, pki *PKI) *Daemon {
	t.Helper()
	return StartListen(t, "tls+tcp://127.0.0.1:0", "--tls-cert", pki.ServerCert, "--tls-key", pki.ServerKey,
		"--tls-ca", pki.CA, "--tls-client-auth", "required")
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
