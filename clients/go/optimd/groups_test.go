package optimd_test

import (
	"errors"
	"math"
	"testing"

	"github.com/optimd/optimd/clients/go/optimd"
)

// Daemon tests of the protocol's parameter groups, gradient clipping,
// observe and open_key.

// near checks got against want within tol times max(1, |want|).
func near(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(float64(got[i])-want[i]) > tol*math.Max(1, math.Abs(want[i])) {
			t.Fatalf("%s[%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
}

func f32s(t *testing.T, m map[string]optimd.Tensor, name string) []float32 {
	t.Helper()
	ten, ok := m[name]
	if !ok {
		t.Fatalf("no %q in %v", name, m)
	}
	v, err := ten.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantLRs(t *testing.T, what string, got map[string]float64, want map[string]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-12*w {
			t.Fatalf("%s = %v, want %v", what, got, want)
		}
	}
}

// TestGroups: a session with a second group of its own lr; each
// parameter is updated with its group's lr, info and step show both lrs,
// and set_hparams on one group leaves the other alone.
func TestGroups(t *testing.T) {
	c, ctx := connect(t)
	const lrDefault, lrHead = 0.01, 0.1
	opened := try(c.Open(ctx, "groups", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lrDefault},
		Groups:  []optimd.GroupSpec{{Name: "head", Hparams: optimd.Hparams{"lr": lrHead}}},
	})).must(t)
	s := opened.Session
	if opened.LR != lrDefault {
		t.Fatalf("open lr %v, want the default group's %v", opened.LR, lrDefault)
	}
	try(c.Register(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{1, 2})})).must(t)
	try(c.RegisterInGroup(ctx, s, "head", map[string]optimd.Tensor{
		"h": optimd.FromFloat32([]float32{3, 4}), "h2": optimd.FromFloat32([]float32{5})})).must(t)
	_, err := c.RegisterInGroup(ctx, s, "nosuch", map[string]optimd.Tensor{"x": optimd.FromFloat32([]float32{1})})
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)

	info := try(c.Info(ctx, s, "")).must(t)
	if len(info.Groups) != 2 || info.Groups[0].Name != optimd.DefaultGroup || info.Groups[1].Name != "head" {
		t.Fatalf("groups %+v, want default then head", info.Groups)
	}
	def, head := info.Group(optimd.DefaultGroup), info.Group("head")
	if def.LR != lrDefault || def.BaseLR != lrDefault || def.Params != 1 {
		t.Fatalf("default group %+v", def)
	}
	if head.LR != lrHead || head.BaseLR != lrHead || head.Params != 2 || head.Hparams["lr"] != lrHead {
		t.Fatalf("head group %+v", head)
	}
	if info.LR != lrDefault || info.Group("nosuch") != nil {
		t.Fatalf("top-level lr %v (want the default group's), Group(nosuch) %v", info.LR, info.Group("nosuch"))
	}
	wantGroup := map[string]string{"w": "default", "h": "head", "h2": "head"}
	for _, p := range info.Params {
		if p.Group != wantGroup[p.Name] {
			t.Fatalf("param %s in group %q, want %q", p.Name, p.Group, wantGroup[p.Name])
		}
	}

	// Plain SGD: p -= lr * g with each parameter's group lr.
	ones := optimd.FromFloat32([]float32{1, 1})
	res := try(c.Step(ctx, s, map[string]optimd.Tensor{"w": ones, "h": ones}, nil)).must(t)
	wantLRs(t, "lrs", res.LRs, map[string]float64{"default": lrDefault, "head": lrHead})
	wantLRs(t, "next_lrs", res.NextLRs, map[string]float64{"default": lrDefault, "head": lrHead})
	if res.LR != lrDefault || res.GradNorm != nil || res.GradNorms != nil {
		t.Fatalf("step %+v: lr not the default group's, or norms without clip_norm", res)
	}
	near(t, "w", f32s(t, res.Params, "w"), []float64{1 - lrDefault, 2 - lrDefault}, 4*eps32)
	near(t, "h", f32s(t, res.Params, "h"), []float64{3 - lrHead, 4 - lrHead}, 4*eps32)

	hp := try(c.SetGroupHparams(ctx, s, "head", optimd.Hparams{"lr": 0.2})).must(t)
	if hp.Group("head").LR != 0.2 || hp.Group(optimd.DefaultGroup).LR != lrDefault || hp.LR != lrDefault {
		t.Fatalf("after set_hparams on head: %+v", hp.Groups)
	}
	_, err = c.SetGroupHparams(ctx, s, "nosuch", optimd.Hparams{"lr": 0.2})
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)
	res = try(c.Step(ctx, s, map[string]optimd.Tensor{"h": ones}, nil)).must(t)
	wantLRs(t, "lrs", res.LRs, map[string]float64{"default": lrDefault, "head": 0.2})
	near(t, "h", f32s(t, res.Params, "h"), []float64{3 - lrHead - 0.2, 4 - lrHead - 0.2}, 4*eps32)

	// Without a group set_hparams reaches every group.
	hp = try(c.SetHparams(ctx, s, optimd.Hparams{"lr": 0.5})).must(t)
	if hp.Group("head").LR != 0.5 || hp.Group(optimd.DefaultGroup).LR != 0.5 {
		t.Fatalf("after set_hparams on all: %+v", hp.Groups)
	}
}

// TestClip: clip_norm scales the gradients to max_norm and reports the norm
// before clipping; clip_value clamps each element; per_group reports a
// norm per group.
func TestClip(t *testing.T) {
	c, ctx := connect(t)
	s := try(c.Open(ctx, "clip", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1.0}})).must(t).Session
	try(c.Register(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{0, 0})})).must(t)

	g := map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{3, 4})}
	res := try(c.Step(ctx, s, g, &optimd.StepOptions{ClipNorm: &optimd.ClipNorm{MaxNorm: 1}})).must(t)
	if res.GradNorm == nil || math.Abs(*res.GradNorm-5) > 4*eps32*5 {
		t.Fatalf("grad_norm %v, want 5", res.GradNorm)
	}
	if res.GradNorms != nil || res.LRs != nil || res.NextLRs != nil {
		t.Fatalf("a one-group session's step has per-group keys: %+v", res)
	}
	coef := 1 / (5 + 1e-6)
	w := []float64{-3 * coef, -4 * coef}
	near(t, "w after clip_norm", f32s(t, res.Params, "w"), w, 8*eps32)

	// The inf norm is the largest magnitude.
	g = map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{-6, 2})}
	res = try(c.Step(ctx, s, g, &optimd.StepOptions{ClipNorm: &optimd.ClipNorm{MaxNorm: 100, NormType: math.Inf(1)}})).must(t)
	if res.GradNorm == nil || *res.GradNorm != 6 {
		t.Fatalf("inf-norm grad_norm %v, want 6", res.GradNorm)
	}
	w = []float64{w[0] + 6, w[1] - 2}
	near(t, "w after an unclipped step", f32s(t, res.Params, "w"), w, 8*eps32)

	g = map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{3, -4})}
	res = try(c.Step(ctx, s, g, &optimd.StepOptions{ClipValue: 2})).must(t)
	if res.GradNorm != nil {
		t.Fatalf("grad_norm %v without clip_norm", *res.GradNorm)
	}
	w = []float64{w[0] - 2, w[1] + 2}
	near(t, "w after clip_value", f32s(t, res.Params, "w"), w, 8*eps32)

	// Per group: each group's gradients are clipped against their own norm.
	s2 := try(c.Open(ctx, "clip2", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 1.0}, Groups: []optimd.GroupSpec{{Name: "head"}},
	})).must(t).Session
	try(c.Register(ctx, s2, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{0, 0})})).must(t)
	try(c.RegisterInGroup(ctx, s2, "head", map[string]optimd.Tensor{"h": optimd.FromFloat32([]float32{0, 0})})).must(t)
	g = map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{3, 4}), "h": optimd.FromFloat32([]float32{0, 0.5})}
	res = try(c.Step(ctx, s2, g, &optimd.StepOptions{ClipNorm: &optimd.ClipNorm{MaxNorm: 1, PerGroup: true}})).must(t)
	if res.GradNorm != nil || len(res.GradNorms) != 2 ||
		math.Abs(res.GradNorms["default"]-5) > 4*eps32*5 || math.Abs(res.GradNorms["head"]-0.5) > 4*eps32 {
		t.Fatalf("per-group norms %v (grad_norm %v), want default 5, head 0.5", res.GradNorms, res.GradNorm)
	}
	near(t, "w", f32s(t, res.Params, "w"), []float64{-3 * coef, -4 * coef}, 8*eps32)
	// 0.5 is under max_norm: the coefficient is capped at 1.
	near(t, "h", f32s(t, res.Params, "h"), []float64{0, -0.5}, 8*eps32)
}

// TestObservePlateau: with plateau (patience 0, factor 0.5) a metric worse
// than the best so far halves the lr of the next step.
func TestObservePlateau(t *testing.T) {
	c, ctx := connect(t)
	const lr = 0.1
	s := try(c.Open(ctx, "plateau", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lr}, Scheduler: "plateau",
		SchedHparams: optimd.Hparams{"patience": 0, "factor": 0.5},
		Groups:       []optimd.GroupSpec{{Name: "fixed", NoScheduler: true}},
	})).must(t).Session
	try(c.Register(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{1})})).must(t)

	info := try(c.Info(ctx, s, "")).must(t)
	if info.Scheduler != "plateau" || info.Group("fixed").Scheduler != "" {
		t.Fatalf("schedulers: default %q, fixed %q", info.Scheduler, info.Group("fixed").Scheduler)
	}
	// No metric scheduler in that group.
	_, err := c.Observe(ctx, s, 1.0, "fixed")
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)

	obs := try(c.Observe(ctx, s, 1.0, "")).must(t)
	if obs.LR != lr {
		t.Fatalf("after the first metric lr %v, want %v", obs.LR, lr)
	}
	obs = try(c.Observe(ctx, s, 0.5, "")).must(t)
	if obs.LR != lr {
		t.Fatalf("after a better metric lr %v, want %v", obs.LR, lr)
	}
	obs = try(c.Observe(ctx, s, 2.0, "")).must(t)
	if math.Abs(obs.LR-lr/2) > 1e-15 {
		t.Fatalf("after a worse metric lr %v, want %v", obs.LR, lr/2)
	}
	wantLRs(t, "observe lrs", obs.LRs, map[string]float64{"default": lr / 2, "fixed": lr})
	if got := try(c.Info(ctx, s, "")).must(t).LR; math.Abs(got-lr/2) > 1e-15 {
		t.Fatalf("info lr %v after the halving, want %v", got, lr/2)
	}
	res := try(c.Step(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat32([]float32{1})}, nil)).must(t)
	if math.Abs(res.LR-lr/2) > 1e-15 {
		t.Fatalf("step used lr %v, want %v", res.LR, lr/2)
	}
	near(t, "w", f32s(t, res.Params, "w"), []float64{1 - lr/2}, 4*eps32)
}

// TestOpenKey: an open retried with its key gets the session back; a
// different key or none does not.
func TestOpenKey(t *testing.T) {
	c, ctx := connect(t)
	key := optimd.NewOpenKey()
	if len(key) < 16 || len(key) > 64 || key == optimd.NewOpenKey() {
		t.Fatalf("open key %q: wrong length or not random", key)
	}
	opts := &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 0.25}, OpenKey: key}
	first := try(c.Open(ctx, "keyed", "adam", opts)).must(t)
	if first.Existing {
		t.Fatal("a first open reports an existing session")
	}
	again := try(c.Open(ctx, "keyed", "adam", opts)).must(t)
	if !again.Existing || again.Session != first.Session || again.LR != 0.25 {
		t.Fatalf("retried open %+v, want the session %+v with existing", again, first.Session)
	}
	try(c.Attach(ctx, again.Session)).must(t)

	_, err := c.Open(ctx, "keyed", "adam", &optimd.OpenOptions{OpenKey: optimd.NewOpenKey()})
	wantServerError(t, err, optimd.CodeSessionExists, optimd.ErrSessionExists)
	_, err = c.Open(ctx, "keyed", "adam", nil)
	wantServerError(t, err, optimd.CodeSessionExists, optimd.ErrSessionExists)
	var se *optimd.ServerError
	if _, err = c.Open(ctx, "short-key", "adam", &optimd.OpenOptions{OpenKey: "short"}); !errors.As(err, &se) {
		t.Fatalf("an open key of 5 bytes: %v, want a server error", err)
	}
}
