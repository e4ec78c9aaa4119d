package optimd_test

import (
	"crypto/tls"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

func tlsConfig(t *testing.T, f optimd.TLSFiles) *tls.Config {
	t.Helper()
	cfg, err := optimd.TLSConfigFromFiles(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestTLSSession: a whole session over tls+tcp:// with a client
// certificate, against a daemon that requires one.
func TestTLSSession(t *testing.T) {
	pki := daemontest.MakePKI(t)
	d := daemontest.StartTLS(t, pki)
	if !strings.HasPrefix(d.URL, "tls+tcp://127.0.0.1:") {
		t.Fatalf("daemon URL %q", d.URL)
	}
	c, err := optimd.Dial(d.URL, &optimd.Options{Timeout: 30 * time.Second,
		TLS: tlsConfig(t, optimd.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey})})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)

	const lr = 0.1
	s := try(c.Open(ctx, "tls", "adam", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": lr}})).must(t).Session
	init := []float32{0, 1, 2, 3, 4, 5}
	if n := try(c.Register(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32(init, 6)})).must(t); n != 1 {
		t.Fatalf("registered %d", n)
	}
	res := try(c.Step(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{1, 1, 1, 1, 1, 1}, 6)}, nil)).must(t)
	w := try(res.Params["w"].Float32s()).must(t)
	for i := range w {
		// Adam's first step moves every element by lr*g/(|g|+eps).
		if want := float64(init[i]) - lr; math.Abs(float64(w[i])-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("w[%d] = %g, want %g", i, w[i], want)
		}
	}
	pulled := try(c.Pull(ctx, s, nil)).must(t)
	if string(pulled["w"].Data) != string(res.Params["w"].Data) {
		t.Error("pull differs from the step's reply")
	}
	if err := c.CloseSession(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(ctx, s, nil); err == nil {
		t.Fatal("pull on a closed session succeeded")
	}
}

// dialRefused dials with cfg and expects a refusal, from Dial or at the
// latest the first call, bounded by the client's Timeout; it returns the
// error.
func dialRefused(t *testing.T, url string, cfg *tls.Config) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		c, err := optimd.Dial(url, &optimd.Options{Timeout: 5 * time.Second, TLS: cfg})
		if err == nil {
			_, err = c.Hello(testCtx(t), "refused")
			c.Close()
			if err == nil {
				err = errors.New("no error")
			} else {
				err = errors.New("dial succeeded, the call failed: " + err.Error())
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("a refused TLS client still waits after 60 s")
	}
	return nil
}

// TestTLSRefused: no client certificate, one from another CA, and a
// client that trusts another CA all fail Dial with an error that says
// what went wrong; the daemon serves on.
func TestTLSRefused(t *testing.T) {
	pki := daemontest.MakePKI(t)
	d := daemontest.StartTLS(t, pki)
	cases := []struct {
		name string
		cfg  *tls.Config
		want []string
	}{
		{"no client certificate", tlsConfig(t, optimd.TLSFiles{CA: pki.CA}), []string{"refused this client's certificate"}},
		{"client certificate from another CA",
			tlsConfig(t, optimd.TLSFiles{CA: pki.CA, Cert: pki.RogueClientCert, Key: pki.RogueClientKey}), []string{"refused this client's certificate"}},
		{"trusts another CA",
			tlsConfig(t, optimd.TLSFiles{CA: pki.RogueCA, Cert: pki.ClientCert, Key: pki.ClientKey}),
			[]string{"certificate", "unknown authority"}},
	}
	for _, tc := range cases {
		err := dialRefused(t, d.URL, tc.cfg)
		t.Logf("%s: %v", tc.name, err)
		if strings.HasPrefix(err.Error(), "no error") || strings.HasPrefix(err.Error(), "dial succeeded") {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
	if _, err := optimd.Dial(d.URL, nil); err == nil || !strings.Contains(err.Error(), "Options.TLS") {
		t.Errorf("tls+tcp:// without Options.TLS: %v", err)
	}
	if _, err := optimd.TLSConfigFromFiles(optimd.TLSFiles{Cert: pki.ClientCert}); err == nil {
		t.Error("a certificate without its key was accepted")
	}

	c, err := optimd.Dial(d.URL, &optimd.Options{Timeout: 30 * time.Second,
		TLS: tlsConfig(t, optimd.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey})})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	try(c.Hello(testCtx(t), "after")).must(t)
}
