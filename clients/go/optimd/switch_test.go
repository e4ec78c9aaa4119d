package optimd_test

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

const testAdminToken = "go-admin-token-for-the-test"

func TestSwitchAndReload(t *testing.T) {
	d := daemontest.Start(t, "--admin-token", testAdminToken)
	c, err := optimd.Dial(d.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testCtx(t)

	t.Run("switch", func(t *testing.T) { checkSwitch(t, ctx, c) })

	t.Run("reload", func(t *testing.T) {
		loads := try(c.Reload(ctx, testAdminToken)).must(t)
		for _, l := range loads {
			if l.Path == "" || l.Loaded != (l.Error == "") || l.Loaded != (l.ID != "") {
				t.Errorf("reload entry: %+v", l)
			}
		}
		_, err := c.Reload(ctx, testAdminToken+"x")
		wantServerError(t, err, optimd.CodeBadToken, optimd.ErrBadToken)
		if optimd.CodeBadToken != 21 {
			t.Errorf("CodeBadToken is %d", optimd.CodeBadToken)
		}
		_, err = c.Load(ctx, "/nonexistent/plugin.so", "wrong")
		wantServerError(t, err, optimd.CodeBadToken, optimd.ErrBadToken)
		_, err = c.Load(ctx, "/nonexistent/plugin.so", testAdminToken)
		wantServerError(t, err, optimd.CodePlugin, optimd.ErrPlugin)
	})
}

// TestDropAndShutdown ends its daemon with shutdown; daemontest's cleanup
// then finds it exited and checks that it exited 0.
func TestDropAndShutdown(t *testing.T) {
	d := daemontest.Start(t, "--admin-token", testAdminToken)
	c, err := optimd.Dial(d.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testCtx(t)

	s := try(c.Open(ctx, "dropme", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.1}})).must(t).Session
	wantServerError(t, c.Drop(ctx, "dropme", testAdminToken+"x"), optimd.CodeBadToken, optimd.ErrBadToken)
	try(c.Info(ctx, s, "")).must(t) // a refused drop leaves it
	if err := c.Drop(ctx, "dropme", testAdminToken); err != nil {
		t.Fatalf("drop: %v", err)
	}
	_, err = c.Info(ctx, s, "")
	wantServerError(t, err, optimd.CodeUnknownSession, optimd.ErrUnknownSession)
	wantServerError(t, c.Drop(ctx, "dropme", testAdminToken), optimd.CodeUnknownSession, optimd.ErrUnknownSession)

	wantServerError(t, c.Shutdown(ctx, "wrong"), optimd.CodeBadToken, optimd.ErrBadToken)
	if gone, _ := d.WaitExit(0); gone {
		t.Fatal("a refused shutdown stopped the daemon")
	}
	if err := c.Shutdown(ctx, testAdminToken); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	gone, err := d.WaitExit(10 * time.Second)
	if !gone {
		t.Fatal("the daemon still runs 10 s after shutdown")
	}
	if err != nil {
		t.Fatalf("the daemon exited with %v after shutdown", err)
	}
}

func checkSwitch(t *testing.T, ctx context.Context, c *optimd.Client) {
	opened := try(c.Open(ctx, "switch", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.1, "momentum": 0.9}})).must(t)
	s := opened.Session
	try(c.Register(ctx, s, map[string]optimd.Tensor{
		"w": optimd.FromFloat32([]float32{-1, -0.5, 0.5, 1})})).must(t)
	for _, g := range []float32{0.5, 1.5} {
		try(c.Step(ctx, s, map[string]optimd.Tensor{
			"w": optimd.FromFloat32([]float32{g, g, g, g})}, &optimd.StepOptions{NoReturn: true})).must(t)
	}
	before := try(c.State(ctx, s, nil)).must(t)["w"]["momentum_buffer"]
	if before.Len() != 4 || bytes.Equal(before.Data, make([]byte, len(before.Data))) {
		// A zero buffer would make "unchanged" prove nothing.
		t.Fatalf("momentum_buffer before the switch: %+v", before)
	}

	sw := try(c.Switch(ctx, s, "rmsprop", nil)).must(t)
	if sw.Optimizer != "rmsprop" || !slices.Equal(sw.Carried, []string{"momentum_buffer"}) ||
		!regexp.MustCompile(`^\d+\.\d+`).MatchString(sw.OptimizerVersion) {
		t.Fatalf("switch: %+v", sw)
	}
	after := try(c.State(ctx, s, nil)).must(t)["w"]["momentum_buffer"]
	if after.DType != before.DType || !slices.Equal(after.Shape, before.Shape) || !bytes.Equal(after.Data, before.Data) {
		t.Fatalf("momentum_buffer changed by the switch: %+v, was %+v", after, before)
	}
	info := try(c.Info(ctx, s, "")).must(t)
	if info.Optimizer != "rmsprop" || info.OptimizerVersion != sw.OptimizerVersion || info.Steps != 2 {
		t.Fatalf("info after the switch: optimizer %q %q, steps %d", info.Optimizer, info.OptimizerVersion, info.Steps)
	}
	if info.Hparams["momentum"] != 0.9 {
		t.Errorf("momentum not carried by key: %v", info.Hparams["momentum"])
	}
	_, err := c.Switch(ctx, s, "no_such_optimizer", nil)
	wantServerError(t, err, optimd.CodeUnknownPlugin, optimd.ErrUnknownPlugin)
}
